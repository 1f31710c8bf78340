"""The ``diffprune`` command: each subcommand is a thin shell over one public Python function."""

import argparse
import sys
import textwrap

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
    from .checkpoint import save
    from .models import load_source, versions
    from .pruning import check_options, prune
    from ._io import check_writable

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


def cmd_export(args):
    from diffprune.export import to_onnx

    opt = args.opt_batch if args.opt_batch is not None else max(args.min_batch, min(8, args.max_batch))
    result = to_onnx(args.src, args.out_dir, dtype="fp16" if args.fp16 else "fp32", opset=args.opset,
                     batch=(args.min_batch, opt, args.max_batch), dynamic_hw=args.dynamic_hw,
                     exporter=args.exporter, slim=args.slim, triton=args.triton, overwrite=args.overwrite)
    meta = result.model_json
    v = meta["validation"]
    size = result.onnx_path.stat().st_size / 1e6
    print(f"exported {result.onnx_path} ({meta['dtype']}, {size:.1f} MB, batch {meta['batch']['min']}..{meta['batch']['max']}, "
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


def _tensorrt_note() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("tensorrt") else " [unavailable here: the tensorrt package is not installed]"


def build_parser() -> argparse.ArgumentParser:
    from .importance import CRITERIA

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
