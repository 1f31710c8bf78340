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
