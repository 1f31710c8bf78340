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
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="ONNX export folder (model.json), engine folder (engine.json), or a deploy.json from "
                        "`diffprune select`, whose backend, scheduler, steps and batch become the defaults")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50, or deploy.json's)")
    p.add_argument("--scheduler", default=None, choices=list(SCHEDULERS), help="default ddim, or deploy.json's")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic, default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="images per UNet call (default: as many as the artifact allows)")
    add_backend_argument(p, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / OpenVINO (default: their choice)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune._io import check_writable
    from diffprune.runtime import Sampler, make_scheduler, open_runner
    from diffprune.runtime.image import grid, save_png

    from diffprune.runtime.deploy import deploy_file, read_deploy

    check_writable(args.out, args.overwrite)
    deploy = read_deploy(args.artifact) if deploy_file(args.artifact) else {}
    artifact = deploy.get("artifact", args.artifact)
    args.scheduler = args.scheduler or deploy.get("scheduler", "ddim")
    args.steps = args.steps or deploy.get("steps", 50)
    args.batch = args.batch or deploy.get("batch")
    args.backend = args.backend or deploy.get("backend", "auto")
    kwargs = {"eta": args.eta} if args.scheduler == "ddim" else {}
    if args.eta and args.scheduler != "ddim":
        raise DiffPruneError(f"--eta applies to the ddim scheduler only, not {args.scheduler}.")
    with open_runner(artifact, args.backend, threads=args.threads) as runner:
        scheduler = make_scheduler(args.scheduler, runner.scheduler_config, **kwargs)
        sampler = Sampler(runner, scheduler)
        images = sampler.generate(args.n, seed=args.seed, steps=args.steps, batch=args.batch)
    save_png(args.out, grid(images))
    t = sampler.last_timing
    precision = getattr(runner, "info", {}).get("precision")
    backend = runner.backend + (f" ({precision})" if precision else "")
    print(f"wrote {args.out}: {args.n} images, {args.steps} {args.scheduler} steps on {backend}, "
          f"{t['total_s']:.2f} s ({t['unet_s']:.2f} s in the UNet, sampler share {t['sampler_share']:.1%})"
          + (f"; settings from {deploy['file']}" if deploy else ""))
    return 0
