"""``diffprune select``: a shell over :func:`diffprune.selection.select.select`.

ONNX exports and engines are measured without torch; --sweep prunes, and a model folder is
exported first, both of which need the toolchain.
"""

import argparse
import textwrap

from diffprune.evaluation.evaluate import is_artifact

from ._common import (CRITERIA_NAMES, DEFAULT_METHOD, add_backend_argument, count, count_or_zero, float_list, int_list, require,
                      scheduler_list)
from .export import NEEDS as EXPORT_NEEDS

NAME = "select"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="pick model x scheduler x steps x backend x batch x cache interval within a latency budget (Pareto table, plot, deploy.json)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Choose the deployment configuration with the best quality within a latency budget on this
            machine. Each axis is a comma list: models (DENSE, CANDIDATEs, --sweep fractions of dense MACs,
            each pruned, optionally fine-tuned and exported), --scheduler, --steps, --backend, --batch.

            Quality: every configuration samples the same --n seeds, scored as SSIM (and PSNR; FID with
            --features) against the dense model at --reference (default: its deterministic scheduler, or
            DDIM, at 100 steps). Latency: each model/backend/batch is timed once in its own process; end to
            end times for every scheduler and step count are predicted from that, and the predicted Pareto
            front and every choice are then measured end to end (alternating runs, as `diffprune bench`).
            No choice rests on a prediction alone; the prediction error is reported.

            Beside the joint choice, the report shows the two naive ones at the same budget: the dense model
            with fewer steps, and the pruned models at the default steps (default setting: the first
            scheduler, the most steps, the first backend and batch). Writes select.json, select.md,
            select.png (quality vs latency, budget lines) and deploy.json, which `diffprune sample` and
            `diffprune bench` run directly. Exit status 3 when nothing fits: the closest is named."""),
        epilog=textwrap.dedent("""\
            examples:
              diffprune select builtin:digits-ddpm --sweep 0.5 --finetune-steps 300 \\
                  --scheduler ddim,dpm-solver++ --steps 5,10,20,50 --backend ort-cpu,openvino --budget-ms 40
              diffprune sample select/deploy.json --n 16 --out grid.png
              diffprune bench select/deploy.json --out bench-choice"""),
    )
    p.add_argument("dense", metavar="DENSE", help="the dense model (source or export): the quality reference")
    p.add_argument("candidates", nargs="*", metavar="CANDIDATE", help="model folders, ONNX exports or engines")
    p.add_argument("--sweep", type=float_list, help="fractions of dense MACs to keep, e.g. 0.3,0.5,0.7")
    p.add_argument("--target-speedup", type=float_list, default=None, metavar="S[,S...]",
                   help="like --sweep, but each model pruned to that measured speedup of one UNet call on the first "
                        "--backend at the first --batch (latency tables, cached; see `diffprune profile`), e.g. 1.5,2,3; "
                        "the backend must be named (ort-cpu, openvino@f32, ...), not auto")
    p.add_argument("--budget-ms", type=float_list, required=True, metavar="MS[,MS...]",
                   help="latency budget in ms; several give one choice each (deploy.json is the first's)")
    p.add_argument("--per", default="image", choices=["image", "batch"], help="the budget is per image (default) or per batch")
    add_backend_argument(p, multiple=True)
    p.add_argument("--batch", type=int_list, default=[1], help="comma-separated batch sizes (default 1)")
    p.add_argument("--scheduler", type=scheduler_list, default=["ddim"], metavar="NAME[,NAME...]",
                   help="comma-separated: ddim, dpm-solver++, ddpm (default ddim)")
    p.add_argument("--steps", type=int_list, default=[50], metavar="N[,N...]", help="comma-separated step counts (default 50)")
    p.add_argument("--cache-interval", type=int_list, default=[1], metavar="N[,N...]",
                   help="step caching intervals to choose among (DeepCache: the whole UNet every N-th step, its shallow "
                        "graph between); above 1, models are exported with --step-cache (default 1: off)")
    p.add_argument("--reference", default="auto", metavar="SCHEDULER:STEPS",
                   help="the dense setting quality is measured against (default auto: ddim or the model's "
                        "deterministic scheduler, 100 steps)")
    p.add_argument("--n", type=count, default=16, help="images per configuration for the quality score (default 16)")
    p.add_argument("--features", help="ONNX feature network (images in [0, 1] -> vectors), or builtin:digits-features: "
                                      "adds FID, against the dense reference images or --fid-reference")
    p.add_argument("--fid-reference", help="real images for FID (folder, .npy/.npz, builtin:digits) or a .npz of "
                                           "their statistics (mu, sigma)")
    p.add_argument("--rank", default="ssim", choices=["ssim", "fid"],
                   help="what the choice maximises: SSIM vs dense (default), or lowest FID (needs --features)")
    p.add_argument("--quality-from", metavar="SELECT_JSON",
                   help="reuse the quality scores of an earlier select.json (same model names, schedulers, steps, "
                        "backends) instead of sampling: measure quality once, plan latency on each machine")
    p.add_argument("--runs", type=count, default=10, help="timed end-to-end runs per measured configuration (default 10)")
    p.add_argument("--probe-runs", type=count, default=5, help="timed runs of each model/backend/batch probe (default 5)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(CRITERIA_NAMES), help="pruning method for --sweep (default magnitude)")
    p.add_argument("--data", default="builtin:digits", help="calibration / fine-tuning data for --sweep")
    p.add_argument("--finetune-steps", type=count_or_zero, default=0, help="fine-tune each sweep model this many steps (default 0)")
    p.add_argument("--calibration-images", type=count, default=64,
                   help="calibration images for pruning each --sweep model (default 64)")
    p.add_argument("--max-timesteps", type=count, default=None,
                   help="cap on the timesteps Diff-Pruning sums for --sweep (default: no cap)")
    p.add_argument("--threads", type=count, default=None,
                   help="CPU threads for every measured process (default: their choice)")
    p.add_argument("--out", default="select", help="report folder (default select; exports go to OUT.work)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune.selection.decide import check_grid

    check_grid(args.scheduler, args.steps, args.backend, args.batch, args.budget_ms, args.per, args.n, args.runs,
               args.cache_interval)
    if args.sweep or args.target_speedup:
        needs = EXPORT_NEEDS + (("accelerate",) if args.finetune_steps else ())
        require(*needs, why="Pruning the dense model for --sweep")
    for src in (args.dense, *args.candidates):
        if not is_artifact(src):
            require(*EXPORT_NEEDS, why=f"Exporting {src!r} to ONNX (it is not an export or engine folder)")
    from diffprune.selection.select import select

    result = select(args.dense, candidates=args.candidates, sweep=args.sweep or (),
                    speedups=args.target_speedup or (), budget_ms=args.budget_ms,
                    per=args.per, backend=args.backend, batch=args.batch, steps=args.steps, scheduler=args.scheduler,
                    reference=args.reference, n=args.n, runs=args.runs, probe_runs=args.probe_runs,
                    features=args.features, fid_reference=args.fid_reference, rank=args.rank,
                    quality_from=args.quality_from, method=args.method, data=args.data, finetune_steps=args.finetune_steps,
                    calibration_images=args.calibration_images, max_timesteps=args.max_timesteps,
                    threads=args.threads, out=args.out, overwrite=args.overwrite, progress=not args.quiet,
                    cache_interval=args.cache_interval)
    print(f"wrote {args.out}/select.md, select.json, select.png" + (", deploy.json" if result["choice"] else ""))
    # 3 = measured fine, but nothing fits the budget: scripts can tell this from an error (2).
    return 0 if result["choice"] else 3
