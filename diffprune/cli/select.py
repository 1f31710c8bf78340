"""``diffprune select``: a shell over :func:`diffprune.select.select`.

ONNX exports and engines are measured without torch; --sweep prunes, and a model folder is
exported first, both of which need the toolchain.
"""

import argparse
import textwrap

from ._common import CRITERIA_NAMES, add_backend_argument, float_list, is_artifact, require
from .export import NEEDS as EXPORT_NEEDS

NAME = "select"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="pick the best-quality model within a latency budget (Pareto table and plot)",
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
    p.add_argument("--sweep", type=float_list, help="fractions of dense MACs to keep, e.g. 0.3,0.5,0.7")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget in ms")
    p.add_argument("--per", default="image", choices=["image", "batch"], help="the budget is per image (default) or per batch")
    add_backend_argument(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--n", type=int, default=16, help="images per model for the quality score (default 16)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--method", default="diff-pruning", choices=list(CRITERIA_NAMES), help="pruning method for --sweep")
    p.add_argument("--data", default="builtin:digits", help="calibration / fine-tuning data for --sweep")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each sweep model this many steps (default 0)")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--max-timesteps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="select", help="report folder (default select)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.sweep:
        needs = EXPORT_NEEDS + (("accelerate",) if args.finetune_steps else ())
        require(*needs, why="Pruning the dense model for --sweep")
    for src in (args.dense, *args.candidates):
        if not is_artifact(src):
            require(*EXPORT_NEEDS, why=f"Exporting {src!r} to ONNX (it is not an export or engine folder)")
    from diffprune.select import select

    result = select(args.dense, candidates=args.candidates, sweep=args.sweep or (), budget_ms=args.budget_ms,
                    per=args.per, backend=args.backend, batch=args.batch, steps=args.steps, n=args.n, runs=args.runs,
                    method=args.method, data=args.data, finetune_steps=args.finetune_steps,
                    calibration_images=args.calibration_images, max_timesteps=args.max_timesteps,
                    threads=args.threads, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    # 3 = measured fine, but nothing fits the budget: scripts can tell this from an error (2).
    return 0 if result["choice"] else 3
