"""``diffprune sample``: a shell over the torch-free runtime (:class:`diffprune.runtime.Sampler`, and
:class:`diffprune.runtime.Pipeline` for pipeline exports: prompt -> image)."""

import argparse

from diffprune.errors import DiffPruneError
from diffprune.runtime.schedulers import SCHEDULERS

from ._common import add_backend_argument, count

NAME = "sample"


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="generate images with the torch-free runtime and write a PNG grid",
        description="Noise -> images with ONNX Runtime, OpenVINO or TensorRT and a numpy scheduler (no torch). "
                    "A seed gives the same images on every machine and at every batch size, for one backend. "
                    "A pipeline export (pipeline.json: Stable Diffusion, SDXL, LDM) takes a prompt, with "
                    "classifier-free guidance in one doubled batch.",
        epilog="examples:\n  diffprune sample cifar-pruned-onnx --n 64 --steps 50 --scheduler ddim --seed 0 --out grid.png\n"
               "  diffprune sample sd-onnx --prompt \"a photo of a cat\" --negative-prompt blurry --guidance 7.5 "
               "--steps 25 --scheduler euler --n 4 --out cats.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="ONNX export folder (model.json), engine folder (engine.json), pipeline export folder "
                        "(pipeline.json), or a deploy.json from `diffprune select`, whose backend, scheduler, steps "
                        "and batch become the defaults")
    p.add_argument("--prompt", default=None, help="pipeline exports: the prompt (text-to-image pipelines need one)")
    p.add_argument("--negative-prompt", default=None, help="pipeline exports: what to guide away from "
                                                             "(default: the pipeline's, usually empty)")
    p.add_argument("--guidance", type=float, default=None,
                   help="pipeline exports: classifier-free guidance scale (default: pipeline.json's, SD 7.5; <= 1 off)")
    p.add_argument("--class-label", type=int, default=None, help="class-conditional pipeline exports: the class")
    p.add_argument("--n", type=count, default=None, help="number of images (default 64; pipelines 1)")
    p.add_argument("--steps", type=count, default=None, help="sampling steps (default 50, or deploy.json's)")
    p.add_argument("--scheduler", default=None, choices=list(SCHEDULERS),
                   help="default ddim, or deploy.json's; for pipelines the one their scheduler config names")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic, default)")
    p.add_argument("--cache-interval", type=count, default=None, metavar="N",
                   help="step caching (DeepCache): the whole UNet every N-th step, its shallow graph on the cached deep "
                        "feature between; needs an export made with --step-cache (default 1: off, or deploy.json's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--batch", type=count, default=None, help="images per UNet call (default: as many as the artifact allows)")
    add_backend_argument(p, default=None)
    p.add_argument("--threads", type=count, default=None, help="CPU threads for ONNX Runtime / OpenVINO (default: their choice)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.add_argument("--overwrite", action="store_true", help="replace the PNG if it exists")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune._io import check_writable
    from diffprune.runtime import Sampler, make_scheduler, open_runner
    from diffprune.runtime.image import grid, save_png

    from diffprune.runtime.deploy import SETTINGS, apply_deploy
    from diffprune.runtime.formats import is_pipeline

    check_writable(args.out, args.overwrite)
    if is_pipeline(args.artifact):
        return run_pipeline(args)
    if args.prompt is not None or args.negative_prompt is not None or args.guidance is not None or \
            args.class_label is not None:
        raise DiffPruneError(
            f"{args.artifact!r} is a single UNet export (model.json), not a pipeline: --prompt, --negative-prompt, "
            "--guidance and --class-label need the pipeline's text encoder and decoder. Export the whole pipeline "
            "(`diffprune export PIPELINE OUT`, which writes pipeline.json) and sample that folder.")
    if args.n is None:
        args.n = 64
    (artifact,), settings, (deploy,) = apply_deploy([args.artifact], {k: getattr(args, k) for k in SETTINGS})
    # Only what was not given comes from deploy.json (argparse already refused 0 and negative counts).
    for key, default in (("scheduler", "ddim"), ("steps", 50), ("batch", None), ("backend", "auto")):
        setattr(args, key, settings[key] if settings[key] is not None else default)
    if args.cache_interval is None:
        args.cache_interval = int((deploy or {}).get("cache_interval") or 1)
    kwargs = {"eta": args.eta} if args.scheduler == "ddim" else {}
    if args.eta and args.scheduler != "ddim":
        raise DiffPruneError(f"--eta applies to the ddim scheduler only, not {args.scheduler}.")
    with open_runner(artifact, args.backend, threads=args.threads) as runner:
        if runner.auto:
            print(runner.auto["line"])
        scheduler = make_scheduler(args.scheduler, runner.scheduler_config, **kwargs)
        with Sampler(runner, scheduler, cache_interval=args.cache_interval) as sampler:
            images = sampler.generate(args.n, seed=args.seed, steps=args.steps, batch=args.batch)
    save_png(args.out, grid(images))
    t = sampler.last_timing
    precision = getattr(runner, "info", {}).get("precision")
    backend = runner.backend + (f" ({precision})" if precision else "")
    cached = f" (cache interval {args.cache_interval})" if args.cache_interval > 1 else ""
    print(f"wrote {args.out}: {args.n} images, {args.steps} {args.scheduler} steps{cached} on {backend}, "
          f"{t['total_s']:.2f} s ({t['unet_s']:.2f} s in the UNet, sampler share {t['sampler_share']:.1%})"
          + (f"; settings from {deploy['file']}" if deploy else ""))
    return 0


def run_pipeline(args) -> int:
    """A pipeline export: prompt (or class label, or nothing for LDMs) -> images, components timed."""
    from diffprune.runtime.image import grid, save_png
    from diffprune.runtime.pipeline import Pipeline

    args.cache_interval = args.cache_interval or 1
    with Pipeline(args.artifact, "auto" if args.backend is None else args.backend, threads=args.threads) as pipe:
        images = pipe.generate(args.prompt, n=args.n, negative_prompt=args.negative_prompt, guidance=args.guidance,
                               steps=50 if args.steps is None else args.steps, scheduler=args.scheduler, seed=args.seed, batch=args.batch,
                               class_labels=args.class_label, eta=args.eta, cache_interval=args.cache_interval)
        backend = pipe.runners["unet"].backend
    if pipe.auto:
        print(pipe.auto["line"])
    save_png(args.out, grid(images))
    t = pipe.last_timing
    for note in pipe.notes:
        print(f"note: {note}")
    cached = f" (cache interval {args.cache_interval})" if args.cache_interval > 1 else ""
    print(f"wrote {args.out}: {len(images)} images, {t['steps']} {t['scheduler']} steps{cached}, guidance {t['guidance']:g} "
          f"on {backend}, {t['total_s']:.2f} s (text encoder {t['text_encoder_s']:.2f} s, UNet {t['unet_s']:.2f} s "
          f"in {t['unet_calls']} calls, decoder {t['decoder_s']:.2f} s, sampler {t['sampler_s']:.2f} s)")
    return 0
