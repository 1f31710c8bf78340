"""``diffprune bench``: a shell over :func:`diffprune.evaluation.benchmark.run_bench` and ``write_report``."""

import argparse
import sys
import textwrap

from diffprune.runtime.schedulers import SCHEDULERS

from ._common import add_backend_argument, count, count_or_zero, int_list

NAME = "bench"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="end-to-end latency: dense vs pruned on a runtime, plus the PyTorch eager baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Measure noise -> uint8 images (scheduler and post-processing included) for each artifact;
            for pipeline exports (pipeline.json) prompt -> uint8 images, with the time of each component
            (text encoder, UNet over the steps, decoder, sampler) and guidance in one doubled batch.
            Each model is served by a process of its own, as deployed, and the timed runs alternate
            A B A B ... so machine drift cancels: warm-up, then --runs timed runs; median, p90, min,
            images/s, the UNet's own time and the sampler's share, and each process's peak memory.
            The dense model in a diffusers DDIMPipeline (PyTorch eager; for pipelines the diffusers
            StableDiffusion(XL)/LDM pipeline of the same source) is added as the baseline a user
            would otherwise run. Writes bench.json, bench.md and bench.png (the plot needs matplotlib).

            Speedups are given twice: the ratio of medians, and "paired", the median over rounds of the
            ratio within one round, which cancels drift that hits only some rounds. Compare numbers
            only within one report: shared machines drift by 10 % and more between runs."""),
        epilog="examples:\n  diffprune bench dense-onnx pruned-onnx --backend ort-cpu --batch 1,16 --steps 50 --out bench-cpu\n"
               "  diffprune bench sd-onnx sd-pruned-onnx --prompt 'a cat' --guidance 7.5 --steps 4 --out bench-sd",
    )
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                   help="dense first, then pruned ones; or deploy.json files from `diffprune select`, whose "
                        "backend, scheduler, steps and batch become the defaults")
    add_backend_argument(p, default=None, multiple=True)
    p.add_argument("--batch", type=int_list, default=None, help="comma-separated batch sizes (default 1)")
    p.add_argument("--steps", type=count, default=None, help="sampling steps (default 50)")
    p.add_argument("--scheduler", default=None, choices=list(SCHEDULERS),
                   help="default ddim; for pipeline exports the one their scheduler config names")
    p.add_argument("--prompt", default=None, help="pipeline exports: the prompt of every image "
                                                  "(default 'a photo of an astronaut riding a horse on mars')")
    p.add_argument("--guidance", type=float, default=None,
                   help="pipeline exports: classifier-free guidance scale (default the pipeline's, SD 7.5; <= 1 off)")
    p.add_argument("--cache-interval", type=count, default=1, metavar="N",
                   help="step caching (DeepCache): the whole UNet every N-th step, the export's shallow graph between "
                        "(exports made with --step-cache; default 1: off); the PyTorch baseline stays uncached")
    p.add_argument("--runs", type=count, default=10, help="timed runs per model and batch (default 10)")
    p.add_argument("--warmup", type=count_or_zero, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=count, default=None, help="CPU threads for every process, the PyTorch baseline too (default: the CPUs this process may use)")
    p.add_argument("--torch-baseline", default="auto",
                   help="dense model source for the PyTorch eager baseline: auto (from the first artifact's "
                        "model.json), a model folder / arch:NAME, or none")
    p.add_argument("--no-memory", action="store_true", help="leave peak memory out of the report")
    p.add_argument("--out", default="bench", help="report folder (default bench)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune._io import check_writable
    from diffprune.evaluation.benchmark import markdown, report_files, run_bench, write_report

    check_writable(args.out, args.overwrite)
    args.artifacts = apply_deploy(args)
    results = run_bench(args.artifacts, backend=args.backend, batches=args.batch, steps=args.steps,
                        scheduler=args.scheduler, runs=args.runs, warmup=args.warmup, threads=args.threads,
                        torch_baseline=args.torch_baseline, memory=not args.no_memory, progress=not args.quiet,
                        prompt=args.prompt, guidance=args.guidance, cache_interval=args.cache_interval)
    command = "diffprune " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("diffprune") else ""
    write_report(results, args.out, command=command, overwrite=args.overwrite)
    print(markdown(results, command))
    files, skipped = report_files(args.out)
    print(f"wrote {args.out}/{', '.join(files)}" + (f" ({skipped})" if skipped else ""))
    return 0


def apply_deploy(args) -> list:
    """Replace deploy.json files among the artifacts by the artifacts they name, and take their settings
    where the command line gives none (:func:`diffprune.runtime.deploy.apply_deploy`); deploy files that
    disagree on a setting must be settled there."""
    from diffprune.runtime.deploy import SETTINGS
    from diffprune.runtime.deploy import apply_deploy as merge
    from diffprune.runtime.formats import is_pipeline

    artifacts, settings, _ = merge(args.artifacts, {k: getattr(args, k) for k in SETTINGS})
    # --backend and --batch take lists; a deploy file sets one value. None is "not given" (argparse refuses 0).
    if args.backend is None:
        args.backend = [settings["backend"]] if settings["backend"] is not None else ["auto"]
    if args.batch is None:
        args.batch = [settings["batch"]] if settings["batch"] is not None else [1]
    args.steps = settings["steps"] if settings["steps"] is not None else 50
    args.scheduler = settings["scheduler"]
    if not any(is_pipeline(a) for a in artifacts):  # pipelines default to their own scheduler
        if args.scheduler is None:
            args.scheduler = "ddim"
    return artifacts
