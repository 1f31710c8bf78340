"""``diffprune demo``: a shell over :func:`diffprune.demo.run_demo`."""

import argparse
import textwrap

from ._common import (CRITERIA_NAMES, DEFAULT_METHOD, TOOLCHAIN, add_backend_argument, count, fraction, int_list, missing_note,
                      require)

NAME = "demo"
NEEDS = TOOLCHAIN + ("accelerate", "onnx")  # it prunes, fine-tunes and exports


def register(subparsers):
    from diffprune.demo import DemoOptions

    D = DemoOptions()  # the defaults live in one place
    p = subparsers.add_parser(
        NAME, help="the whole pipeline in one command: prune, fine-tune, export, sample, measure" + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Offline, on a CPU in minutes, on the reference digits DDPM shipped in the package:
              1. prune it to half the MACs (magnitude, the study's pick; --method diff-pruning shows the
                 timesteps Diff-Pruning's gradients used)
              2. fine-tune it briefly with distillation from the dense model
              3. export dense and pruned to ONNX and validate both
              4. sample both with the torch-free runtime from the same seeds
              5. measure end-to-end latency dense vs pruned (and the diffusers PyTorch eager pipeline)
              6. print one table and write grid.png (dense row, pruned row), report.json and bench/
            Each stage's artifact stays in OUT; a re-run reuses finished stages.""")
        + missing_note(*NEEDS),
        epilog="examples:\n  diffprune demo\n  diffprune demo --model ./my-ddpm --data ./my_images --out my-demo",
    )
    p.add_argument("--out", default="diffprune-demo", help="output folder (default diffprune-demo)")
    p.add_argument("--model", default="builtin:digits-ddpm", help="dense model: builtin:digits-ddpm (default), a folder, hub id or arch:NAME")
    p.add_argument("--data", default="builtin:digits", help="calibration and fine-tuning data (default builtin:digits)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(CRITERIA_NAMES),
                   help="importance criterion (default magnitude, the study's pick: benchmarks/README.md, \"Which criterion\")")
    p.add_argument("--target-macs", type=fraction, default=0.5, help="fraction of dense MACs to keep (default 0.5)")
    p.add_argument("--target-speedup", type=fraction, default=None, metavar="S",
                   help="prune to S times the dense UNet call's measured speed on --backend instead of --target-macs "
                        "(a latency table is measured once and cached; see `diffprune profile`)")
    p.add_argument("--calibration-images", type=count, default=D.calibration_images,
                   help=f"images for Diff-Pruning's gradients (default {D.calibration_images})")
    p.add_argument("--max-timesteps", type=count, default=None, help="cap on the timesteps Diff-Pruning sums")
    p.add_argument("--round-to", type=count, default=D.round_to, help=f"pruned widths stay multiples of this (default {D.round_to})")
    p.add_argument("--finetune-steps", type=count, default=D.finetune_steps, help=f"fine-tuning steps (default {D.finetune_steps})")
    p.add_argument("--finetune-lr", type=float, default=D.finetune_lr, help=f"fine-tuning learning rate (default {D.finetune_lr:g})")
    p.add_argument("--kd-weight", type=float, default=D.kd_weight,
                   help=f"weight of the distillation loss (matching the dense model) beside the denoising loss (default {D.kd_weight:g})")
    p.add_argument("--n", type=count, default=D.n, help=f"images per model for SSIM and the digits classifier (default {D.n})")
    p.add_argument("--grid", type=count, default=D.grid, help=f"images per model shown in grid.png (default {D.grid})")
    p.add_argument("--steps", type=count, default=D.steps, help=f"DDIM steps (default {D.steps})")
    p.add_argument("--bench-runs", type=count, default=D.bench_runs, help=f"timed runs per model (default {D.bench_runs})")
    p.add_argument("--bench-batch", type=int_list, default=list(D.bench_batches),
                   help=f"batch sizes for the latency table, the largest the headline (default {','.join(map(str, D.bench_batches))})")
    add_backend_argument(p)
    p.add_argument("--threads", type=count, default=None,
                   help="CPU threads for pruning, fine-tuning, the runtime and the PyTorch baseline (default: pruning and "
                        "fine-tuning take the cores other running tasks leave free, so a shared machine slows the demo "
                        "in proportion; the runtime the cores this process may use)")
    p.add_argument("--seed", type=int, default=0, help="seed for pruning, fine-tuning and sampling (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines, only the stage lines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    require(*NEEDS)
    from diffprune.demo import DemoOptions, run_demo

    options = DemoOptions(model=args.model, data=args.data, target_macs=args.target_macs, method=args.method,
                          target_speedup=args.target_speedup,
                          calibration_images=args.calibration_images, max_timesteps=args.max_timesteps,
                          round_to=args.round_to, finetune_steps=args.finetune_steps,
                          finetune_lr=args.finetune_lr, kd_weight=args.kd_weight, n=args.n, grid=args.grid, steps=args.steps, bench_runs=args.bench_runs,
                          bench_batches=tuple(args.bench_batch),
                          threads=args.threads, seed=args.seed, backend=args.backend)
    run_demo(args.out, options, progress=not args.quiet)
    return 0
