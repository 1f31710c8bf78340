"""The ``diffprune`` command: each subcommand is a thin shell over one public Python function."""

import argparse
import json
import sys
import textwrap
from pathlib import Path

from .errors import DiffPruneError

EPILOG = """\
pipeline:  prune -> (fine-tune) -> export -> run
examples:
  diffprune prune arch:ddpm-cifar10-32 cifar-pruned --method magnitude --target-macs 0.56
  diffprune prune ./ddpm-cifar10-32 pruned --data ./cifar_images --ratio 0.3
  diffprune prune google/ddpm-cifar10-32 pruned --data generate:64
"""


def _fraction(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffPruneError(
            f"--device {name} was asked for but this torch ({torch.__version__}) sees no CUDA GPU. "
            "Use --device cpu, or install a CUDA build of torch on a machine with a GPU."
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise DiffPruneError(f"--device {name!r} is not known; allowed: auto, cpu, cuda, cuda:N.")
    return name


def cmd_prune(args):
    from ._io import check_writable
    from .checkpoint import save
    from .models import load_source
    from .pruning import check_options, prune

    # Fail on bad options before minutes of work, not after.
    check_options(args.method, args.ratio, args.target_macs, args.thr, args.round_to, args.data, args.max_timesteps,
                  args.num_images, args.micro_batch)
    check_writable(args.out, args.overwrite)
    device = _resolve_device(args.device)
    model, scheduler_config, source = load_source(args.src, device=device)
    pruned, report = prune(
        model, method=args.method, ratio=args.ratio, target_macs=args.target_macs, data=args.data,
        thr=args.thr, round_to=args.round_to, seed=args.seed, scheduler_config=scheduler_config,
        num_images=args.num_images, micro_batch=args.micro_batch, prune_heads=args.prune_heads, max_timesteps=args.max_timesteps,
        progress=not args.quiet,
    )
    info = {"source": source, "pruning": {k: v for k, v in report.to_dict().items() if k != "layer_widths"}}
    save(pruned, args.out, info=info, scheduler_config=scheduler_config, overwrite=args.overwrite)
    print(report.table())
    print(f"saved {args.out} (config.json, diffusion_pytorch_model.safetensors, pruning.json)")
    return 0


def cmd_finetune(args):
    from .finetune import finetune

    report = finetune(
        args.src, args.out, data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, grad_accum=args.grad_accum, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, teacher=args.teacher, kd_weight=args.kd_weight,
        num_images=args.num_images, checkpoint_every=args.checkpoint_every, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, log_every=args.log_every, seed=args.seed, device=args.device,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"fine-tuned {report.steps} steps in {report.seconds:.1f} s ({report.steps_per_s:.2f} steps/s, "
              f"{report.world_size} process(es), {report.mixed_precision}); final loss {report.final_loss:.4f}")
        print(f"saved {args.out} (EMA weights, loss.csv, finetune.json)")
    return 0


def cmd_demo(args):
    from .demo import DemoOptions, run_demo

    options = DemoOptions(model=args.model, data=args.data, target_macs=args.target_macs, method=args.method,
                          calibration_images=args.calibration_images, max_timesteps=args.max_timesteps,
                          finetune_steps=args.finetune_steps, n=args.n, steps=args.steps, bench_runs=args.bench_runs,
                          bench_batches=tuple(args.bench_batch),
                          threads=args.threads, seed=args.seed)
    run_demo(args.out, options, progress=not args.quiet)
    return 0


def cmd_eval(args):
    import tempfile

    import numpy as np

    from .metrics import INCEPTION_HELP, OnnxFeatures, consistency, feature_statistics, fid
    from .runtime import Sampler, make_scheduler, open_runner
    from .select import _as_artifact

    if args.reference and not args.features:
        raise DiffPruneError(f"FID against {args.reference!r} needs a feature network. {INCEPTION_HELP}")
    work = Path(tempfile.mkdtemp(prefix="diffprune-eval-"))
    images = {}
    for role, src in (("model", args.model), ("dense", args.dense)):
        if src is None:
            continue
        artifact = _as_artifact(src, work / f"{role}-onnx", args.batch, log=lambda m: None)
        with open_runner(artifact, args.backend) as runner:
            sampler = Sampler(runner, make_scheduler(args.scheduler, runner.scheduler_config))
            images[role] = sampler.generate(args.n, seed=args.seed, steps=args.steps, batch=args.batch)
    result = {"n": args.n, "steps": args.steps, "scheduler": args.scheduler, "backend": args.backend}
    if "dense" in images:
        result["consistency"] = consistency(images["model"], images["dense"])
        print(f"consistency with the dense model (same seeds): SSIM {result['consistency']['ssim']:.4f}, "
              f"PSNR {result['consistency']['psnr_db']:.2f} dB over {args.n} images")
    if args.features:
        features = OnnxFeatures(args.features)
        if args.reference:
            result["fid"] = fid(images["model"], args.reference, features)
            print(f"FID vs {args.reference}: {result['fid']['fid']:.3f} ({args.n} images, {result['fid']['dims']}-d features)")
        if args.save_stats:
            mu, sigma = feature_statistics(features(images["model"]))
            np.savez(args.save_stats, mu=mu, sigma=sigma)
            print(f"saved feature statistics of the generated images to {args.save_stats}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def cmd_select(args):
    from .select import select

    result = select(args.dense, candidates=args.candidates, sweep=args.sweep or (), budget_ms=args.budget_ms,
                    per=args.per, backend=args.backend, batch=args.batch, steps=args.steps, n=args.n, runs=args.runs,
                    method=args.method, data=args.data, finetune_steps=args.finetune_steps,
                    calibration_images=args.calibration_images, max_timesteps=args.max_timesteps,
                    threads=args.threads, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    # 3 = measured fine, but nothing fits the budget: scripts can tell this from an error (2).
    return 0 if result["choice"] else 3


def _float_list(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.3,0.5,0.7, got {text!r}") from None


def cmd_export(args):
    from diffprune.export import to_onnx

    opt = args.opt_batch if args.opt_batch is not None else max(args.min_batch, min(8, args.max_batch))
    result = to_onnx(args.src, args.out_dir, dtype="fp16" if args.fp16 else "fp32", opset=args.opset,
                     batch=(args.min_batch, opt, args.max_batch), dynamic_hw=args.dynamic_hw,
                     exporter=args.exporter, slim=args.slim, triton=args.triton, weights=args.weights,
                     overwrite=args.overwrite)
    meta = result.model_json
    v = meta["validation"]
    print(f"exported {' + '.join(str(f) for f in result.files)} ({meta['dtype']}, {result.megabytes:.1f} MB, batch {meta['batch']['min']}..{meta['batch']['max']}, "
          f"{result.seconds:.1f} s)")
    print(f"validated against torch on ONNX Runtime CPU at batch {', '.join(str(c['batch']) for c in v['cases'])}: "
          f"max-abs {v['max_abs_error']:.2e}, relative {v['max_rel_error']:.2e} (allowed {v['tolerance']})")
    if args.triton:
        print(f"Triton model repository: {args.triton}")
    return 0


def cmd_build(args):
    from diffprune.export import build_engine, write_repository

    out = build_engine(args.onnx_dir, args.out, workspace_gb=args.workspace_gb, optimization_level=args.opt_level,
                       timing_cache=args.timing_cache, hardware_compatible=args.hardware_compatible,
                       version_compatible=args.version_compatible, overwrite=args.overwrite)
    print(f"built {out}/model.plan")
    if args.triton:
        write_repository(args.triton, out, overwrite=args.overwrite)
        print(f"Triton model repository: {args.triton}")
    return 0


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def cmd_sample(args):
    from diffprune._io import check_writable
    from diffprune.runtime import Sampler, make_scheduler, open_runner
    from diffprune.runtime.image import grid, save_png

    check_writable(args.out, args.overwrite)
    kwargs = {"eta": args.eta} if args.scheduler == "ddim" else {}
    if args.eta and args.scheduler != "ddim":
        raise DiffPruneError(f"--eta applies to the ddim scheduler only, not {args.scheduler}.")
    with open_runner(args.artifact, args.backend, threads=args.threads) as runner:
        scheduler = make_scheduler(args.scheduler, runner.scheduler_config, **kwargs)
        sampler = Sampler(runner, scheduler)
        images = sampler.generate(args.n, seed=args.seed, steps=args.steps, batch=args.batch)
    save_png(args.out, grid(images))
    t = sampler.last_timing
    print(f"wrote {args.out}: {args.n} images, {args.steps} {args.scheduler} steps on {runner.backend}, "
          f"{t['total_s']:.2f} s ({t['unet_s']:.2f} s in the UNet, sampler share {t['sampler_share']:.1%})")
    return 0


def cmd_bench(args):
    from diffprune._io import check_writable
    from diffprune.benchmark import markdown, run_bench, write_report

    check_writable(args.out, args.overwrite)
    results = run_bench(args.artifacts, backend=args.backend, batches=args.batch, steps=args.steps,
                        scheduler=args.scheduler, runs=args.runs, warmup=args.warmup, threads=args.threads,
                        torch_baseline=args.torch_baseline, memory=not args.no_memory, progress=not args.quiet)
    command = "diffprune " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("diffprune") else ""
    write_report(results, args.out, command=command, overwrite=args.overwrite)
    print(markdown(results, command))
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


def _tensorrt_note() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("tensorrt") else " [unavailable here: the tensorrt package is not installed]"


def build_parser() -> argparse.ArgumentParser:
    from .importance import CRITERIA
    from .runtime.runners import BACKENDS
    from .runtime.schedulers import SCHEDULERS

    parser = argparse.ArgumentParser(
        prog="diffprune",
        description="Prune diffusers UNets with Diff-Pruning (Fang et al., NeurIPS 2023), safely saved as safetensors + JSON.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "prune", help="structurally prune a UNet2DModel (whole channels)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Remove whole channels from a UNet2DModel. diff-pruning scores channels by Taylor importance
            |w * dL/dw| summed over the early timesteps t = 0, 1, ... until the denoising loss falls
            below --thr x its maximum; later, noisy steps carry no structure and are skipped.
            Widths stay multiples of --round-to and GroupNorm groups / attention heads stay equal.
            SRC: a diffusers folder, a pipeline folder, a hub id (owner/name), a pruned folder, or
            arch:NAME (built-in architecture with random weights: ddpm-cifar10-32, tiny, tiny-attn)."""),
        epilog=EPILOG,
    )
    p.add_argument("src", metavar="SRC", help="model to prune")
    p.add_argument("out", metavar="OUT", help="output folder (written atomically)")
    p.add_argument("--method", default="diff-pruning", choices=list(CRITERIA),
                   help="importance criterion (default: diff-pruning; reinit = random structure, fresh weights)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=_fraction, help="fraction of channels removed per layer, 0 <= r < 1 (paper CIFAR-10: 0.3)")
    how.add_argument("--target-macs", type=_fraction,
                     help="fraction of the dense MACs to keep; the ratio is searched (default 0.5)")
    p.add_argument("--thr", type=_fraction, default=0.05,
                   help="stop summing gradients once loss < thr x max loss (default 0.05; 0 = all timesteps)")
    p.add_argument("--data", default=None,
                   help="calibration images: folder, .npy/.npz, builtin:digits, or generate:N (needed by diff-pruning and taylor)")
    p.add_argument("--max-timesteps", type=int, default=None,
                   help="cap on the timesteps summed, whatever --thr says (default: no cap)")
    p.add_argument("--num-images", type=int, default=64, help="calibration images used (default 64)")
    p.add_argument("--micro-batch", type=int, default=16, help="images per backward pass; lower it if memory is short (default 16)")
    p.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (default 8, for tensor cores; 1 = off)")
    p.add_argument("--prune-heads", action="store_true", help="in attention, remove whole heads instead of shrinking every head")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, data subset and random criteria (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "demo", help="the whole pipeline in one command: prune, fine-tune, export, sample, measure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Offline, on a CPU in minutes, on the reference digits DDPM shipped in the package:
              1. prune it with Diff-Pruning to half the MACs (showing which timesteps were used)
              2. fine-tune it briefly with distillation from the dense model
              3. export dense and pruned to ONNX and validate both
              4. sample both with the torch-free runtime from the same seeds
              5. measure end-to-end latency dense vs pruned (and the diffusers PyTorch eager pipeline)
              6. print one table and write grid.png (dense row, pruned row), report.json and bench/
            Each stage's artifact stays in OUT; a re-run reuses finished stages."""),
        epilog="examples:\n  diffprune demo\n  diffprune demo --model ./my-ddpm --data ./my_images --out my-demo",
    )
    p.add_argument("--out", default="diffprune-demo", help="output folder (default diffprune-demo)")
    p.add_argument("--model", default="builtin:digits-ddpm", help="dense model: builtin:digits-ddpm (default), a folder, hub id or arch:NAME")
    p.add_argument("--data", default="builtin:digits", help="calibration and fine-tuning data (default builtin:digits)")
    p.add_argument("--method", default="diff-pruning", choices=list(CRITERIA))
    p.add_argument("--target-macs", type=_fraction, default=0.5, help="fraction of dense MACs to keep (default 0.5)")
    p.add_argument("--calibration-images", type=int, default=16, help="images for Diff-Pruning's gradients (default 16)")
    p.add_argument("--max-timesteps", type=int, default=None, help="cap on the timesteps Diff-Pruning sums")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tuning steps (default 200)")
    p.add_argument("--n", type=int, default=16, help="images per model in the grid (default 16)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--bench-runs", type=int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--bench-batch", type=_int_list, default=[1, 16], help="batch sizes for the latency table (default 1,16)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "eval", help="quality: SSIM/PSNR vs the dense model from the same seeds, FID with a feature network",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Generate --n images from MODEL (and DENSE, from the same seeds) with the torch-free runtime and
            report SSIM/PSNR between them (the paper's consistency) and, with --reference and --features,
            the FID against a reference set (image folder, .npy/.npz of images, builtin:digits, or a .npz of
            precomputed statistics with keys mu and sigma; --save-stats writes one)."""),
        epilog="example:\n  diffprune eval pruned-onnx --dense dense-onnx --n 256 --reference ./cifar_test --features fid_inception.onnx",
    )
    p.add_argument("model", metavar="MODEL", help="model folder, ONNX export or engine")
    p.add_argument("--dense", help="the dense model, for consistency (SSIM/PSNR)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="ort-cpu", choices=list(BACKENDS))
    p.add_argument("--reference", help="reference images or statistics for FID")
    p.add_argument("--features", help="ONNX feature network for FID (images in [0, 1] -> vectors)")
    p.add_argument("--save-stats", help="write the generated images' feature statistics (.npz) for reuse")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "select", help="pick the best-quality model within a latency budget (Pareto table and plot)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Measure each candidate's end-to-end latency on this machine and backend, score its quality as
            SSIM vs the dense model from the same seeds, and choose the best within --budget-ms (per image
            or per batch). Candidates: model folders / exports / engines, and --sweep fractions of dense
            MACs (each pruned, optionally fine-tuned with --finetune-steps, and exported). Prints the
            Pareto table with the choice marked; writes select.json, select.md and select.png (quality vs
            latency with the budget line). Exit status 3 when nothing fits: the closest is named, none chosen."""),
        epilog="example:\n  diffprune select builtin:digits-ddpm --sweep 0.3,0.5,0.7 --finetune-steps 200 --budget-ms 150",
    )
    p.add_argument("dense", metavar="DENSE", help="the dense model (source or export): the quality reference")
    p.add_argument("candidates", nargs="*", metavar="CANDIDATE", help="model folders, ONNX exports or engines")
    p.add_argument("--sweep", type=_float_list, help="fractions of dense MACs to keep, e.g. 0.3,0.5,0.7")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget in ms")
    p.add_argument("--per", default="image", choices=["image", "batch"], help="the budget is per image (default) or per batch")
    p.add_argument("--backend", default="ort-cpu", choices=list(BACKENDS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--n", type=int, default=16, help="images per model for the quality score (default 16)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--method", default="diff-pruning", choices=list(CRITERIA), help="pruning method for --sweep")
    p.add_argument("--data", default="builtin:digits", help="calibration / fine-tuning data for --sweep")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each sweep model this many steps (default 0)")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--max-timesteps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="select", help="report folder (default select)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "finetune", help="fine-tune a pruned model (EMA, AMP, distillation, resume, multi-GPU via accelerate)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Fine-tune SRC (a pruned folder, a diffusers folder, a hub id or arch:NAME) and save the EMA
            weights to OUT in the safe format, with loss.csv and finetune.json. Checkpoints (weights, EMA,
            optimizer, schedule, step; safetensors + JSON) go to OUT.ckpt every --checkpoint-every steps;
            --resume continues after a crash and ends with the same weights as an uninterrupted run.
            Several GPUs or nodes: accelerate launch --multi_gpu -m diffprune finetune ..."""),
        epilog=textwrap.dedent("""\
            examples:
              diffprune finetune cifar-pruned cifar-ft --data ./cifar_images --steps 100000 --teacher google/ddpm-cifar10-32 --kd-weight 1
              accelerate launch --multi_gpu --num_processes 8 -m diffprune finetune cifar-pruned cifar-ft --data ./cifar_images --steps 100000"""),
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--data", default="builtin:digits", help="folder, .npy/.npz, builtin:digits (default) or generate:N")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000; the paper: 100K for CIFAR-10)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch per optimizer step (default 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    p.add_argument("--lr-schedule", default="constant_with_warmup", choices=["constant_with_warmup", "cosine", "linear"])
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1; 0 = off)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay with warm-up (default 0.9999; 0 = off)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                   help="auto: bf16 on CUDA where supported, fp16 otherwise, fp32 on CPU")
    p.add_argument("--teacher", help="dense model to distil from (same sources as SRC)")
    p.add_argument("--kd-weight", type=float, default=0.0, help="weight of the teacher-matching loss (default 0)")
    p.add_argument("--num-images", type=int, default=None, help="use a seeded subset of the data")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500; 0 = none)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default OUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--log-every", type=int, default=10, help="steps between loss-log rows (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "export", help="export a UNet to validated ONNX (fp32 or fp16), optionally a Triton repository",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Export SRC (any model `prune` accepts, pruned or dense) to OUT_DIR/model.onnx + model.json.
            Inputs: sample (B, C, H, W) float32 and timestep (B,) float32; output: out_sample. B is dynamic.
            Validation is part of export: onnx.checker, shape inference, then ONNX Runtime vs torch at
            several batch sizes and timesteps (fp32 max-abs <= 1e-4; fp16 relative <= 1e-2, no NaN/Inf).
            If it fails, nothing is written and the command exits non-zero."""),
        epilog="example:\n  diffprune export cifar-pruned cifar-pruned-onnx --fp16 --max-batch 64 --triton triton-repo",
    )
    p.add_argument("src", metavar="SRC", help="model folder, hub id or arch:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (written atomically)")
    p.add_argument("--fp16", action="store_true", help="float16 graph (norms and softmax stay float32; I/O stays float32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch (default 1)")
    p.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT optimises for (default 8, within min..max)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch (default 64)")
    p.add_argument("--dynamic-hw", action="store_true", help="dynamic height and width (default: fixed at the model's sample size)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.export-based (default) or the legacy TorchScript exporter")
    p.add_argument("--slim", action="store_true", help="clean the graph with onnxslim (needs onnxslim)")
    p.add_argument("--weights", default="external", choices=["external", "inline"],
                   help="external (default): tensors in model.onnx.data, which ONNX Runtime loads without a "
                        "protobuf copy (about 40%% less peak memory); inline: one self-contained model.onnx")
    p.add_argument("--triton", metavar="REPO", help="also write a Triton model repository here")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "build", help="build a TensorRT engine from an ONNX export" + _tensorrt_note(),
        description="Build OUT/model.plan + engine.json from an ONNX export folder with the TensorRT Python API "
                    "(strongly typed, one optimization profile over the export's batch range, timing cache reused). "
                    "Needs an NVIDIA GPU and the tensorrt package (pip install 'diffprune[gpu]')." + _tensorrt_note(),
    )
    p.add_argument("onnx_dir", metavar="ONNX_DIR", help="folder written by `diffprune export`")
    p.add_argument("--out", help="engine folder (default: ONNX_DIR-trt)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0..5 (default 3)")
    p.add_argument("--timing-cache", help="timing cache file, loaded if present and saved after the build")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere+ GPU (slower)")
    p.add_argument("--version-compatible", action="store_true", help="engine loads in newer TensorRT versions")
    p.add_argument("--triton", metavar="REPO", help="also add the engine to a Triton model repository")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "sample", help="generate images with the torch-free runtime and write a PNG grid",
        description="Noise -> images with ONNX Runtime or TensorRT and a numpy scheduler (no torch). "
                    "A seed gives the same images on every machine and at every batch size, for one backend.",
        epilog="example:\n  diffprune sample cifar-pruned-onnx --n 64 --steps 50 --scheduler ddim --seed 0 --out grid.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="ONNX export folder (model.json) or engine folder (engine.json)")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="default ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic, default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="images per UNet call (default: as many as the artifact allows)")
    p.add_argument("--backend", default="ort-cpu", choices=list(BACKENDS), help="default ort-cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: its choice)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "bench", help="end-to-end latency: dense vs pruned on a runtime, plus the PyTorch eager baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Measure noise -> uint8 images (scheduler and post-processing included) for each artifact.
            Each model is served by a process of its own, as deployed, and the timed runs alternate
            A B A B ... so machine drift cancels: warm-up, then --runs timed runs; median, p90, min,
            images/s, the UNet's own time and the sampler's share, and each process's peak memory.
            The dense model in a diffusers DDIMPipeline (PyTorch eager) is added as the baseline a user
            would otherwise run. Writes bench.json, bench.md, bench.png.

            Speedups are given twice: the ratio of medians, and "paired", the median over rounds of the
            ratio within one round, which cancels drift that hits only some rounds. Compare numbers
            only within one report: shared machines drift by 10 % and more between runs."""),
        epilog="example:\n  diffprune bench dense-onnx pruned-onnx --backend ort-cpu --batch 1,16 --steps 50 --out bench-cpu",
    )
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="dense first, then pruned ones")
    p.add_argument("--backend", default="ort-cpu", choices=list(BACKENDS), help="default ort-cpu")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes (default 1)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))
    p.add_argument("--runs", type=int, default=10, help="timed runs per model and batch (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch")
    p.add_argument("--torch-baseline", default="auto",
                   help="dense model source for the PyTorch eager baseline: auto (from the first artifact's "
                        "model.json), a model folder / arch:NAME, or none")
    p.add_argument("--no-memory", action="store_true", help="leave peak memory out of the report")
    p.add_argument("--out", default="bench", help="report folder (default bench)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DiffPruneError as e:
        print(f"diffprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffprune {args.command}: interrupted; no partial output was left behind.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
