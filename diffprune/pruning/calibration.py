"""The data the importance criteria see: the calibration set (clean samples, or latents of latent models, with
the conditioning they are denoised under) and ``generate:N`` samples drawn from the model itself, shared by
several processes when there are several. Fine-tuning's ``generate:N`` draws through the same functions."""

import math

from ..errors import DiffPruneError
from . import _distributed
from .importance import Calibration


def device_of(model):
    return next(model.parameters()).device


GUIDANCE_SCALE = 7.5  # the SD pipelines' default classifier-free guidance, for generate:N with --prompts


def check_guidance(guidance_scale, data, prompts) -> float | None:
    """The guidance generate:N draws with: ``guidance_scale`` (default GUIDANCE_SCALE) where samples are drawn
    with prompts, None where nothing is drawn with guidance; a clear error for a scale that would go unused."""
    drawn = isinstance(data, str) and data.startswith("generate:") and prompts is not None
    if guidance_scale is None:
        return GUIDANCE_SCALE if drawn else None
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 1:
        raise DiffPruneError(f"guidance_scale {guidance_scale!r} is invalid; allowed: a number >= 1 (1 = no guidance; "
                             f"SD's default {GUIDANCE_SCALE}; a small pixel model such as builtin:digits-text wants "
                             "about 1.5, see its model card).")
    if not drawn:
        raise DiffPruneError(f"--guidance-scale {guidance_scale:g} applies to samples drawn with prompts (--data "
                             "generate:N --prompts FILE); with other data nothing is drawn with guidance. Leave it out, "
                             "or draw the data with --prompts.")
    return float(guidance_scale)


def build_calibration(data, model, scheduler_config, n, micro_batch, seed, progress, resize="bilinear", class_labels=None,
                 text_encoder=None, vae=None, prompts=None, guidance_scale=GUIDANCE_SCALE, text_tokens=None,
                 uncond_fraction=0.0):
    """Clean samples (latents for latent models) and the conditioning they are denoised under: class
    labels (given, else the data's, else drawn), text embeddings of the captions or prompts (the
    empty-prompt stand-in without a text encoder, ``text_tokens`` long: the pipeline tokenizer's length,
    default 77). ``uncond_fraction`` of the captions (chosen with ``seed``) are replaced by the empty prompt,
    so that the gradients also see the unconditional branch classifier-free guidance samples with.
    Returns (Calibration, what the text inputs were)."""
    import torch

    from ..sources.conditioning import conditioning
    from ..data.images import describe, load_calibration
    from ..data.latents import is_latent
    from ..sources.loader import FromSource
    from ..sources.unet import sample_size

    cfg = model.config
    size = sample_size(model)
    cond = _with_tokens(conditioning(model), text_tokens)
    latent = is_latent(model, cond, vae)
    generating = isinstance(data, str) and data.startswith("generate:")
    if cond.text_width and isinstance(text_encoder, FromSource):
        # Captions and prompts need it (a pipeline without text_encoder/ is then an error); generate:N alone
        # uses it when the source has one, else the zero stand-in. A bare UNet gives None.
        needed = prompts is not None or not generating
        text_encoder = text_encoder.load() if needed or text_encoder.available() else None
    if text_encoder is not None and cond.text_width:
        text_encoder.check_fits(cond)

    if generating:
        images, inputs, text_inputs = generate_samples(model, scheduler_config, generate_count(data), seed, progress,
                                                       class_labels, text_encoder, prompts, latent, guidance_scale,
                                                       text_tokens)
    else:
        if prompts is not None:
            raise DiffPruneError("--prompts go with --data generate:N (the prompts the calibration images are drawn "
                                 "with); image data brings its own captions (same-stem .txt files, or a JSONL's \"text\").")
        if latent:
            from ..sources.vae import encode
            from ..data.latents import load_latent_images

            vae, found = load_latent_images(data, model, cond, vae, n, seed, resize,
                                            alternative=", or --data generate:N to draw latents from the model itself")
        else:
            found = load_calibration(data, size, cfg.in_channels, limit=n, seed=seed, resize=resize)
        text, text_inputs = None, cond.text_inputs
        if cond.text_width:
            found.require_captions(data, "pruned", alternative="or use --data generate:N --prompts FILE")
            captions = with_empty_prompts(found.captions, uncond_fraction, seed)
            text = _encode_text(text_encoder, captions, device_of(model))
            text_inputs = f"captions through {text_encoder.source}"
            if uncond_fraction:
                text_inputs += f", {uncond_fraction:.0%} of them the empty prompt"
        if class_labels is None and cond.num_classes and found.labels is not None:
            try:
                class_labels = cond.check_labels(found.labels)
            except DiffPruneError as e:
                raise DiffPruneError(f"Data {describe(data)!r} holds class labels the model cannot take: {e}") from None
        images = encode(vae, found.images, micro_batch) if latent else found.images
        inputs = cond.inputs(images.shape[0], size, class_labels=class_labels,
                             generator=torch.Generator().manual_seed(seed), text=text)
    calib = Calibration(images=images, scheduler_config=scheduler_config, micro_batch=micro_batch,
                        seed=seed, progress=progress, description=describe(data), inputs=inputs)
    return calib, text_inputs


def with_empty_prompts(captions, fraction: float, seed: int) -> list:
    """``captions`` with round(fraction x N) of them, chosen with ``seed``, replaced by "" (the empty prompt that
    caption dropout trains and classifier-free guidance samples with)."""
    import numpy as np

    captions = list(captions)
    count = int(round(fraction * len(captions)))
    for i in np.random.default_rng(seed).permutation(len(captions))[:count]:
        captions[i] = ""
    return captions


def _with_tokens(cond, text_tokens):
    """``cond`` whose empty-prompt stand-in is ``text_tokens`` long (None: as it is, CLIP's 77)."""
    import dataclasses

    return dataclasses.replace(cond, text_tokens=int(text_tokens)) if text_tokens and cond.text_width else cond


def _encode_text(text_encoder, captions, device):
    """Embeddings of ``captions`` (a clear error without a text encoder; a warning for truncated ones)."""
    if text_encoder is None:
        raise DiffPruneError(
            "Captions or prompts were given, but no text encoder: a bare UNet folder or an in-memory UNet carries "
            "none. Give the pipeline folder (with text_encoder/ and tokenizer/), or text_encoder= in Python "
            "(diffprune.sources.text.build_text_encoder / load_text_encoder).")
    encoded = text_encoder(captions, device=device)
    if encoded.truncated:
        import sys

        print(f"diffprune: warning: {len(encoded.truncated)} of {len(captions)} captions are longer than "
              f"{getattr(text_encoder, 'max_length', 77)} CLIP tokens and were truncated (the first: {captions[encoded.truncated[0]][:80]!r}...), as the SD "
              "pipelines do.", file=sys.stderr)
    return encoded


def generate_count(data: str) -> int:
    """N of ``generate:N`` (a clear error unless N > 0)."""
    text = data.split(":", 1)[1]
    count = int(text) if text.isdigit() else 0
    if count <= 0:
        raise DiffPruneError(f"Data {data!r} is invalid; write generate:N with N > 0 (e.g. generate:64).")
    return count


def generate_samples(model, scheduler_config, count: int, seed: int = 0, progress: bool = True, class_labels=None,
                     text_encoder=None, prompts=None, latent: bool = False, guidance_scale: float | None = None,
                     text_tokens: int | None = None):
    """``generate:N``'s data: ``count`` samples drawn from ``model`` (DDIM, diffprune.data.generate) under its
    conditioning, for pruning's calibration and for fine-tuning. Class labels: ``class_labels`` cycled, else
    drawn uniformly with ``seed``. Text: ``prompts`` cycled through ``text_encoder``, drawn with classifier-free
    guidance ``guidance_scale`` (default GUIDANCE_SCALE); without prompts the encoder's empty prompt, without an
    encoder the stand-in.
    Latents (``latent``) are left unclamped. Several processes share the drawing (_generate_shared).

    Returns ``(samples (N, C, H, W), inputs (the conditioning per sample, batch-first), text_inputs)``, the
    last a description of what the text inputs were."""
    import torch

    from ..sources.conditioning import conditioning
    from ..sources.unet import sample_size

    cond = _with_tokens(conditioning(model), text_tokens)
    size = sample_size(model)
    text_inputs = cond.text_inputs
    text = uncond = None
    guidance_scale = GUIDANCE_SCALE if guidance_scale is None else guidance_scale
    if prompts is not None and not cond.text_width:
        raise DiffPruneError(f"--prompts were given, but this {cond.model_class} reads no text "
                             f"(conditioning: {cond.kind}); leave them out.")
    if cond.text_width and (prompts is not None or text_encoder is not None):
        # Without prompts, the real empty prompt: what the pipeline feeds for "" (not zeros).
        text = _encode_text(text_encoder, [prompts[i % len(prompts)] for i in range(count)] if prompts else [""] * count,
                            device_of(model))
        text_inputs = f"{'prompts' if prompts else 'the empty prompt'} through {text_encoder.source}"
        if prompts:
            uncond = cond.inputs(count, size, generator=torch.Generator().manual_seed(seed),
                                 text=text_encoder([""] * count, device=device_of(model)))
            text_inputs += (f", {len(prompts)} prompt{'s' if len(prompts) > 1 else ''}, images drawn with guidance "
                            f"{guidance_scale:g}")
    inputs = cond.inputs(count, size, class_labels=class_labels, generator=torch.Generator().manual_seed(seed),
                         text=text)
    samples = _generate_shared(model, scheduler_config, count, size, seed, progress, inputs, uncond, latent,
                               guidance_scale)
    return samples, inputs, text_inputs


def _generate_shared(model, scheduler_config, count, size, seed, progress, inputs, uncond, latent,
                     guidance_scale=GUIDANCE_SCALE):
    """generate:N samples; with several processes each rank draws its share (the same starting noise and
    conditioning rows one process would give those samples) and every rank receives all of them."""
    import torch

    from ..sources.conditioning import slice_inputs
    from ..data.generate import generate

    guidance = guidance_scale if uncond is not None else 1.0
    rank, world = _distributed.world()
    if world == 1:
        return generate(model, scheduler_config, count, seed=seed, progress=progress, inputs=inputs, uncond=uncond,
                        guidance_scale=guidance, clamp=not latent)
    if count < world:
        raise DiffPruneError(f"generate:{count} cannot be shared by {world} processes; draw at least {world} samples.")
    lo, hi = _distributed.share(count)
    # generate()'s own draw for all N samples, of which this rank takes its rows.
    noise = torch.randn((count, model.config.in_channels, *size), generator=torch.Generator().manual_seed(seed))
    part = generate(model, scheduler_config, hi - lo, seed=seed, progress=progress and rank == 0, noise=noise[lo:hi],
                    inputs=slice_inputs(inputs, lo, hi), uncond=None if uncond is None else slice_inputs(uncond, lo, hi),
                    guidance_scale=guidance, clamp=not latent)
    return _distributed.gather_rows(part, count, device_of(model))
