"""``diffprune prune``: a shell over :func:`diffprune.pruning.recipe.prune_source` (load -> prune -> save)."""

import argparse
import sys
import textwrap

from diffprune.data.images import RESIZE_MODES

from ._common import (CRITERIA_NAMES, DEFAULT_METHOD, EPILOG, TOOLCHAIN, add_threads_argument, backend_spec, count, fraction,
                      missing_note, require, resolve_device)

NAME = "prune"
NEEDS = TOOLCHAIN


def _sources() -> str:
    """What SRC may be, the shipped models and arch: names read from their tables (diffprune.sources.architectures,
    plain data), so the help cannot fall behind them."""
    import textwrap

    from diffprune.sources.architectures import ARCHITECTURES, BUILTIN_MODELS

    return textwrap.fill(
        "SRC: a diffusers folder, a pipeline folder (its unet/ and scheduler/), a hub id (owner/name), a pruned "
        f"folder, a model shipped in the package ({', '.join(BUILTIN_MODELS)}), or arch:NAME (a built-in "
        f"architecture with random weights: {', '.join(ARCHITECTURES)}).", 100)


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="structurally prune a UNet2DModel or UNet2DConditionModel (whole channels)" + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Remove whole channels from a UNet2DModel (pixel, latent or class-conditional) or a
            UNet2DConditionModel (Stable Diffusion 1.x/2.x, SDXL). The default, magnitude, ranks channels by
            their weights' norm and needs no data; in diffprune's study (3 seeds, half the MACs) it tied
            diff-pruning on the pixel digits DDPM and beat it on the text-conditioned one, in a third of the
            time (benchmarks/README.md, "Which criterion"). --method diff-pruning scores channels by Taylor
            importance |w * dL/dw| summed over the early timesteps t = 0, 1, ... until the denoising loss
            falls below --thr x its maximum (later, noisy steps carry no structure and are skipped); it
            needs --data.
            Widths stay multiples of --round-to and GroupNorm groups / attention heads stay equal.
            Text-conditioned UNets are fed the captions of the data (same-stem .txt beside each image, or a
            .jsonl of {"image": path, "text": caption}) through the pipeline's frozen text encoder, the
            images encoded to latents by its VAE; --data generate:N --prompts FILE draws the latents from the
            model itself with those prompts. Class-conditional ones get --class-labels, else the data's
            labels (builtin:digits, an .npz's labels), else uniformly drawn ones. A pipeline SRC gives a
            pipeline OUT (the pruned parts in place, the other components carried over).
            --components unet,decoder (or decoder alone) also prunes the pipeline's VAE or VQ decoder, the
            same way (with diff-pruning or taylor: importance |w * dL/dw| of a reconstruction loss against the
            dense decoder on the encoder's latents of --data, or generate:N's drawn by the UNet); --ratio / --target-macs
            apply to each component (the decoder's MACs at the UNet's latent size); post_quant_conv and
            conv_out keep the latent and image channels. Then `diffprune finetune OUT OUT2 --component
            decoder` distils it from the dense decoder.
            SOURCES
            Several GPUs: accelerate launch --multi_gpu -m diffprune prune ... (or torchrun; on CPUs
            torchrun --nproc_per_node N -m diffprune prune ... --device cpu): each process takes a share of the
            calibration images, their gradients and losses are summed, so the kept channels and the timesteps
            used are those of one process; the first process writes OUT.""").replace("SOURCES", _sources())
        + missing_note(*NEEDS),
        epilog=EPILOG,
    )
    p.add_argument("src", metavar="SRC", help="model to prune")
    p.add_argument("out", metavar="OUT", help="output folder (written atomically)")
    p.add_argument("--components", default="unet", metavar="LIST",
                   help="what to prune in a pipeline SRC: unet (default), decoder (its VAE/VQ decoder), or unet,decoder")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(CRITERIA_NAMES),
                   help="importance criterion (default: magnitude, which needs no --data; diff-pruning and taylor need --data; reinit = random structure, fresh weights)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=fraction, help="fraction of channels removed per layer, 0 <= r < 1 (paper CIFAR-10: 0.3)")
    how.add_argument("--target-macs", type=fraction,
                     help="fraction of the dense MACs to keep; the ratio is searched (default 0.5)")
    how.add_argument("--target-ms", type=fraction, default=None, metavar="MS",
                     help="prune to this time of one UNet call on --backend (milliseconds at --latency-batch): widths "
                          "chosen per group under a latency table (`diffprune profile`), then measured")
    how.add_argument("--target-speedup", type=fraction, default=None, metavar="S",
                     help="prune to the dense call's measured time on --backend divided by S (e.g. 2)")
    p.add_argument("--backend", type=backend_spec, default=None,
                   help="with --target-ms/--target-speedup: the backend the latency is measured on (ort-cpu, "
                        "openvino@f32, openvino, ort-cuda, ...; required, no auto)")
    p.add_argument("--latency-table", default=None, metavar="TABLE.json",
                   help="reuse this latency table (`diffprune profile`); default: the cached one, else measured now")
    p.add_argument("--latency-batch", type=count, default=1, help="UNet batch the latency target is for (default 1)")
    p.add_argument("--thr", type=fraction, default=0.05,
                   help="stop summing gradients once loss < thr x max loss (default 0.05, the paper's; 0 = all timesteps). "
                        "Text-conditioned models read their prompt mostly past that stop: with --timestep-weight log, "
                        "0.01 reaches those timesteps (benchmarks/text_timesteps.py)")
    p.add_argument("--data", default=None,
                   help="calibration images: folder (captions in same-stem .txt files), .jsonl of image-caption pairs, "
                        ".npy/.npz, builtin:digits, or generate:N (needed by diff-pruning and taylor)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="text-conditioned models with --data generate:N: one prompt per line, cycled over the N "
                        "samples (drawn with classifier-free guidance, see --guidance-scale); default: the empty prompt")
    p.add_argument("--guidance-scale", type=fraction, default=None, metavar="SCALE",
                   help="classifier-free guidance the generate:N samples are drawn with when --prompts are given "
                        "(default 7.5, Stable Diffusion's; builtin:digits-text wants 1.5, see its model card); "
                        "recorded in pruning.json")
    p.add_argument("--resize", default="bilinear", choices=RESIZE_MODES,
                   help="how images of another size reach the model's: bilinear (default; stretch), pad (black "
                        "borders, e.g. 28x28 digits for a model trained on them padded to 32x32), center-crop "
                        "(shorter side to the size, then the middle); a warning is printed whenever images are resized")
    p.add_argument("--max-timesteps", type=count, default=None,
                   help="cap on the timesteps summed, whatever --thr says (default: no cap)")
    p.add_argument("--num-images", type=count, default=64, help="calibration images used (default 64)")
    p.add_argument("--uncond-fraction", type=fraction, default=0.0, metavar="F",
                   help="text-conditioned models with captioned data: replace this share of the calibration captions "
                        "by the empty prompt, so the gradients also see the unconditional branch classifier-free "
                        "guidance samples with (default 0; benchmarks/results/criteria measures 0.1 and 0.5)")
    p.add_argument("--timestep-weight", default="loss", choices=("loss", "log"),
                   help="diff-pruning/taylor: loss (default, the paper's) sums each timestep's gradient as it is, so the "
                        "low-noise timesteps, whose loss is largest, dominate; log divides it by its loss (the gradient "
                        "of log L_t), so every timestep weighs alike")
    p.add_argument("--score-norm", default=None, choices=("group", "layer", "none"),
                   help="diff-pruning/taylor: group (the paper's; the default with --target-macs/--ratio) averages the "
                        "coupled layers' Taylor scores, each group normalised; layer normalises each layer's scores "
                        "first, so no single layer decides alone; none (the default with --target-ms/--target-speedup) "
                        "leaves scores comparable across groups, so the latency knapsack can tell which group matters")
    p.add_argument("--micro-batch", type=count, default=16, help="images per backward pass; lower it if memory is short (default 16)")
    p.add_argument("--round-to", type=count, default=8, help="keep widths multiples of this (default 8, for tensor cores; 1 = off)")
    p.add_argument("--class-labels", type=_labels, default=None, metavar="L[,L...]",
                   help="class-conditional models: labels cycled over the calibration images, e.g. 0,1,2 "
                        "(default: drawn uniformly with --seed)")
    p.add_argument("--prune-heads", action="store_true", help="in attention, remove whole heads instead of shrinking every head")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, data subset and random criteria (default 0)")
    add_threads_argument(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, calibration_defaults={k: p.get_default(k) for k in CALIBRATION_OPTIONS})
    return p


# What only the gradient criteria read: given with a data-free one (magnitude, the default), they are unused.
CALIBRATION_OPTIONS = ("data", "num_images", "micro_batch", "max_timesteps", "thr", "uncond_fraction", "score_norm", "timestep_weight",
                       "prompts", "class_labels", "guidance_scale")


def _note_unused_calibration(args) -> None:
    from diffprune.pruning.importance import CRITERIA

    if CRITERIA[args.method].needs_data:
        return
    unused = ["--" + k.replace("_", "-") for k, default in args.calibration_defaults.items() if getattr(args, k) != default]
    if unused:
        print(f"note: {args.method} ranks channels by their weights and reads no calibration data, so "
              f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used; for Diff-Pruning's gradients "
              "add --method diff-pruning.", file=sys.stderr)


def _labels(text: str) -> list:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 0,3,7)") from None


def run(args) -> int:
    require(*NEEDS)
    from diffprune._io import check_writable
    from diffprune.pruning import start_processes
    from diffprune.pruning.calibration import check_guidance
    from diffprune.pruning.pruner import check_options
    from diffprune.pruning.recipe import check_components, prune_source
    from diffprune.sources.resolve import pipeline_source
    from diffprune.sources.text import read_prompts
    from diffprune.threads import check_threads

    # Fail on bad options before minutes of work, not after.
    components = check_components(args.components)
    latency = None
    if args.target_ms is not None or args.target_speedup is not None:
        from diffprune.latency import LatencyTarget

        latency = LatencyTarget(backend=args.backend, target_ms=args.target_ms, speedup=args.target_speedup,
                                table=args.latency_table, batch=args.latency_batch)
        latency.check()
    elif args.backend or args.latency_table:
        from diffprune.errors import DiffPruneError

        raise DiffPruneError("--backend and --latency-table belong to a latency target; add --target-ms MS or "
                             "--target-speedup S (or drop them to prune to --ratio / --target-macs).")
    check_options(args.method, args.ratio, args.target_macs, args.thr, args.round_to, args.data, args.max_timesteps,
                  args.num_images, args.micro_batch)
    check_threads(args.threads)
    _note_unused_calibration(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    check_guidance(args.guidance_scale, args.data, prompts)
    device = resolve_device(args.device)
    if "decoder" in components:
        return _run_with_decoder(args, components, prompts, device, latency)
    device, main = start_processes(device)
    if main:
        check_writable(args.out, args.overwrite)
    pruned = prune_source(
        args.src, device=device, method=args.method, ratio=args.ratio, target_macs=args.target_macs, data=args.data,
        thr=args.thr, round_to=args.round_to, seed=args.seed, num_images=args.num_images, micro_batch=args.micro_batch,
        prune_heads=args.prune_heads, max_timesteps=args.max_timesteps, resize=args.resize, progress=not args.quiet,
        class_labels=args.class_labels, prompts=prompts,
        guidance_scale=args.guidance_scale, latency=latency, uncond_fraction=args.uncond_fraction,
        score_norm=args.score_norm, timestep_weight=args.timestep_weight, threads=args.threads,
    )
    if not main:
        return 0  # every rank holds the same pruned model; the first one writes and prints it
    pruned.save(args.out, overwrite=args.overwrite)
    print(pruned.report.table())
    if pipeline_source(args.src):
        print(f"saved {args.out} (a pipeline folder: the pruned UNet in unet/, the other components of {args.src})")
    else:
        print(f"saved {args.out} (config.json, diffusion_pytorch_model.safetensors, pruning.json)")
    return 0


def _run_with_decoder(args, components, prompts, device, latency=None) -> int:
    """--components with decoder: the UNet (when named) and the decoder pruned in one process, one pipeline OUT.
    A latency target applies to the UNet; the decoder is pruned to --ratio / --target-macs (default half its MACs)."""
    from diffprune._io import check_writable
    from diffprune.pruning.recipe import prune_source, prune_source_decoder, save_pipeline

    check_writable(args.out, args.overwrite)
    pruned = None
    if "unet" in components:
        pruned = prune_source(
            args.src, device=device, method=args.method, ratio=args.ratio, target_macs=args.target_macs,
            data=args.data, thr=args.thr, round_to=args.round_to, seed=args.seed, num_images=args.num_images,
            micro_batch=args.micro_batch, prune_heads=args.prune_heads, max_timesteps=args.max_timesteps,
            resize=args.resize, progress=not args.quiet, class_labels=args.class_labels, prompts=prompts,
            guidance_scale=args.guidance_scale, latency=latency)
    decoder = prune_source_decoder(
        args.src, device=device, method=args.method, ratio=args.ratio, target_macs=args.target_macs, data=args.data,
        num_images=args.num_images, micro_batch=args.micro_batch, round_to=args.round_to, seed=args.seed,
        resize=args.resize, progress=not args.quiet)
    save_pipeline(args.out, args.src, unet=pruned, decoder=decoder, overwrite=args.overwrite)
    if pruned is not None:
        decoder_name = "the VQ decoder" if decoder.report.component == "vq_decoder" else "the VAE decoder"
        print(pruned.report.table(pruned=("the UNet", decoder_name)))
    print(decoder.report.table())
    print(f"saved {args.out} (a pipeline folder: {' and '.join(components)} pruned, the decoder in {decoder.folder}/, "
          f"the other components of {args.src})")
    return 0
