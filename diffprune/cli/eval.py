"""``diffprune eval``: a shell over :func:`diffprune.evaluation.evaluate.evaluate`.

ONNX exports and engines are evaluated without torch; a model folder is exported first, and FID
against reference images loads them, both of which need the toolchain.
"""

import argparse
import json
import textwrap

from diffprune._io import atomic_write_bytes, check_writable
from diffprune.evaluation.evaluate import is_artifact
from diffprune.runtime.schedulers import SCHEDULERS

from ._common import add_backend_argument, count, require
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json or --save-stats file")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune.evaluation.evaluate import check_options, is_statistics

    check_options(args.reference, args.features)  # before the checks for missing packages, as it says more
    for out in (args.json, args.save_stats):  # before minutes of sampling, not after
        if out:
            check_writable(out, args.overwrite)
    for src in (args.model, args.dense):
        if src is not None and not is_artifact(src):
            require(*EXPORT_NEEDS, why=f"Exporting {src!r} to ONNX (it is not an export or engine folder)")
    if args.reference and not is_statistics(args.reference):
        require("torch", why=f"FID against the images in {args.reference!r} (not a .npz of statistics)")
    from diffprune.evaluation.evaluate import evaluate

    result = evaluate(args.model, dense=args.dense, n=args.n, steps=args.steps, scheduler=args.scheduler,
                      batch=args.batch, seed=args.seed, backend=args.backend, reference=args.reference,
                      features=args.features, save_stats=args.save_stats)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    return 0
