"""``diffprune sample``: a shell over the torch-free runtime (:class:`diffprune.runtime.Sampler`)."""

import argparse

from diffprune.errors import DiffPruneError
from diffprune.runtime.schedulers import SCHEDULERS

from ._common import add_backend_argument

NAME = "sample"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="generate images with the torch-free runtime and write a PNG grid",
        description="Noise -> images with ONNX Runtime, OpenVINO or TensorRT and a numpy scheduler (no torch). "
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
    add_backend_argument(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / OpenVINO (default: their choice)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
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
    precision = getattr(runner, "info", {}).get("precision")
    backend = runner.backend + (f" ({precision})" if precision else "")
    print(f"wrote {args.out}: {args.n} images, {args.steps} {args.scheduler} steps on {backend}, "
          f"{t['total_s']:.2f} s ({t['unet_s']:.2f} s in the UNet, sampler share {t['sampler_share']:.1%})")
    return 0
