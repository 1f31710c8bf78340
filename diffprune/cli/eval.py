"""``diffprune eval``: a shell over :mod:`diffprune.evaluation.metrics` and the torch-free runtime.

ONNX exports and engines are evaluated without torch; a model folder is exported first, and FID
against reference images loads them, both of which need the toolchain.
"""

import argparse
import json
import textwrap
from pathlib import Path

from diffprune.errors import DiffPruneError
from diffprune.runtime.schedulers import SCHEDULERS

from ._common import add_backend_argument, count, is_artifact, require
from .export import NEEDS as EXPORT_NEEDS

NAME = "eval"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="quality: SSIM/PSNR vs the dense model from the same seeds, FID with a feature network",
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
    p.add_argument("--n", type=count, default=64, help="images generated per model, from seeds 0..n-1 of --seed (default 64)")
    p.add_argument("--steps", type=count, default=50, help="sampling steps (default 50)")
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="sampling scheduler (default ddim)")
    p.add_argument("--batch", type=count, default=8, help="images per UNet call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise, the same for MODEL and DENSE (default 0)")
    add_backend_argument(p)
    p.add_argument("--reference", help="reference images or statistics for FID")
    p.add_argument("--features", help="ONNX feature network for FID (images in [0, 1] -> vectors)")
    p.add_argument("--save-stats", help="write the generated images' feature statistics (.npz) for reuse")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)
    return p


def _is_statistics(reference) -> bool:
    """A .npz of precomputed statistics (keys mu and sigma), which FID reads without torch."""
    import numpy as np

    path = Path(str(reference))
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files
    except Exception:  # not a readable .npz: metrics reports it
        return False


def run(args) -> int:
    from diffprune.evaluation.metrics import INCEPTION_HELP

    if args.reference and not args.features:
        raise DiffPruneError(f"FID against {args.reference!r} needs a feature network. {INCEPTION_HELP}")
    for src in (args.model, args.dense):
        if src is not None and not is_artifact(src):
            require(*EXPORT_NEEDS, why=f"Exporting {src!r} to ONNX (it is not an export or engine folder)")
    if args.reference and not _is_statistics(args.reference):
        require("torch", why=f"FID against the images in {args.reference!r} (not a .npz of statistics)")

    import tempfile

    import numpy as np

    from diffprune.evaluation.metrics import OnnxFeatures, consistency, feature_statistics, fid
    from diffprune.runtime import Sampler, make_scheduler, open_runner
    from diffprune.runtime.runners import resolve_backend
    from diffprune.selection.select import _as_artifact

    backend = resolve_backend(args.backend)  # recorded as what ran, not as "auto"

    work = Path(tempfile.mkdtemp(prefix="diffprune-eval-"))
    images = {}
    for role, src in (("model", args.model), ("dense", args.dense)):
        if src is None:
            continue
        artifact = _as_artifact(src, work / f"{role}-onnx", args.batch, log=lambda m: None)
        with open_runner(artifact, backend) as runner:
            sampler = Sampler(runner, make_scheduler(args.scheduler, runner.scheduler_config))
            images[role] = sampler.generate(args.n, seed=args.seed, steps=args.steps, batch=args.batch)
    result = {"n": args.n, "steps": args.steps, "scheduler": args.scheduler, "backend": backend}
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
