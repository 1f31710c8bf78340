"""A whole diffusion pipeline -> one folder of validated ONNX components + pipeline.json.

What a deployment runs, per kind of pipeline (the torch-free runtime, diffprune.runtime, reads it):

    kind                 components                                   source
    text-to-image        text_encoder, unet, vae_decoder              StableDiffusionPipeline, arch:tiny-sd/sd15/sd21-base
    text-to-image-xl     text_encoder, text_encoder_2, unet,          StableDiffusionXLPipeline, arch:tiny-sdxl/sdxl
                         vae_decoder
    text-to-image-pixel  text_encoder, unet                           StableDiffusionPipeline without vae/ whose UNet
                                                                      denoises pixels: builtin:digits-text, arch:digits-text
    class-conditional    unet (+ vae_decoder if the pipeline has one)  DDPMPipeline/DDIMPipeline, arch:tiny-class
    latent               unet, vq_decoder                             LDMPipeline (unet/ + vqvae/ + scheduler/)
    pixel                unet                                         DDPMPipeline/DDIMPipeline, arch:tiny, ...

Graphs (float32 I/O; axis 0 dynamic; /work/notes/pipeline-format.md is the contract with the runtime):
    text_encoder(_2)  input_ids int64 (B, L) -> hidden_states (B, L, d): the layer the UNet reads (SD 1/2:
                      last_hidden_state after the final LayerNorm; SDXL: hidden_states[-2], no final norm);
                      SDXL's text_encoder_2 also -> text_embeds (B, P), the projected pooled output
    unet              sample, timestep[, encoder_hidden_states[, text_embeds, time_ids]][, class_labels]
                      -> out_sample (export/onnx.py); its batch range is doubled for classifier-free
                      guidance, which runs [uncond; cond] as one batch of 2B
                      L, the text length, is the pipeline's tokenizer's model_max_length (CLIP's 77 unless the
                      tokenizer says otherwise); the text encoder and the UNet are exported with the same L, and
                      the graphs are checked to fit one another (runtime.formats.check_text_fits) before anything
                      is written
    vae_decoder       latent_sample (B, 4, h, w) = latents / scaling_factor (+ shift) -> sample (B, 3, H, W)
    vq_decoder        latent_sample (B, C, h, w) = latents / scaling_factor -> sample; the nearest-codebook
                      quantisation is inside the graph, as in LDMPipeline's vqvae.decode

fp16: the text encoders and the UNet follow ``dtype``; the VAE/VQ decoder stays float32 unless
``vae_dtype="fp16"`` is asked for. SD's VAE decoder overflows float16 (activations past 65504 in its
up-blocks: NaN, black images) - the reason diffusers upcasts it (``force_upcast``) - so an fp16 decoder
is exported only on request, and validation refuses it if it gives NaN/Inf or drifts.

Why not optimum for the standard parts: its ONNX exporter (optimum-onnx 0.1) pins transformers < 4.58 and
cannot be installed beside transformers 5 (huggingface/optimum-onnx#114); it also cannot take a pruned
UNet (it rebuilds the diffusers config, which has no per-layer widths) nor validate with this project's
strict tolerances. benchmarks/compare_optimum.py compares the graphs where optimum is installed.
"""

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffprune._io import atomic_dir, check_writable
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import PIPELINE_FORMAT, PIPELINE_JSON, TEXT_KINDS, check_text_fits, read_pruning_json

from diffprune.sources.architectures import SD_SCHEDULER, SDXL_SCHEDULER  # noqa: F401 (re-exported)
from diffprune.sources.resolve import Source, pipeline_class, pipeline_kind, resolve

from .onnx import _export, _quiet_exporter, check_options, export_unet, weights_sha256, write_graph

# Defaults of the diffusers pipelines' __call__ (guidance_scale): SD 7.5, SDXL 5.0. Class-conditional
# UNet2DModels have no null class to guide against, so no guidance (scale 1).
# A pixel text-to-image pipeline has no diffusers default of its own (diffusers has no such pipeline): SD's 7.5,
# unless its model_index.json says otherwise (GUIDANCE_KEY; builtin:digits-text sets 1.5, see its model card).
GUIDANCE = {"text-to-image": 7.5, "text-to-image-xl": 5.0, "text-to-image-pixel": 7.5}
GUIDANCE_KEY = "_diffprune_guidance_scale"
# fp32 tolerances per component (fp16: export/validate.py's relative 1e-2). Text hidden states can
# reach magnitudes in the hundreds (SDXL's penultimate layer), so relative; 1e-4 of the largest magnitude:
# builtin:digits-text's encoder (weights initialised at 10x CLIP's scale) differs from torch by 2.2e-5 of it
# at batch 4 (float32 sums in another order), 6.6e-6 at batch 1, which 1e-5 refused. Decoders' outputs are
# pixels in [-1, 1] that become 8-bit levels of 2/255 = 7.8e-3: 1e-3 is an eighth of one.
TOLERANCE_FP32 = {"text_encoder": {"max_rel": 1e-4}, "vae_decoder": {"max_abs": 1e-3}, "vq_decoder": {"max_abs": 1e-3}}
SPATIAL = ("latent_sample", "sample")


@dataclass
class Pipeline:
    """The parts of a pipeline source, loaded (torch modules) and described."""

    kind: str
    unet: object
    scheduler: dict
    source: dict
    pruning: dict | None = None
    text: object = None  # diffprune.sources.text.TextEncoder
    tokenizer_dirs: list = field(default_factory=list)  # a folder source's tokenizer/ (+ tokenizer_2/)
    vae: object = None  # AutoencoderKL
    vq: object = None  # VQModel
    num_classes: int | None = None  # class-conditional UNets: labels in range(num_classes)

    @property
    def text_tokens(self) -> int | None:
        """The length of the text the UNet reads (the tokenizers' max_length), None without a text encoder."""
        return self.text.max_length if self.text is not None else None

    @property
    def components(self) -> dict:
        names = [f"text_encoder{'_' + str(i + 1) if i else ''}" for i in range(len(self.text.parts))] if self.text else []
        names.append("unet")
        if self.vae is not None:
            names.append("vae_decoder")
        if self.vq is not None:
            names.append("vq_decoder")
        return {n: n for n in names}


def save_pipeline_folder(arch: str, folder, vae=None) -> Path:
    """Write the built-in text-to-image architecture ``arch`` (tiny-sd, tiny-sdxl, sd15, ...; random weights) as
    a diffusers pipeline folder, the layout ``StableDiffusion(XL)Pipeline.save_pretrained`` writes and
    ``from_pretrained`` reads: unet/, text_encoder[_2]/, tokenizer[_2]/, vae/, scheduler/, model_index.json.
    For tests and comparisons with diffusers and optimum, which read pipeline folders. ``vae`` replaces the VAE."""
    import diffusers

    from diffprune.sources.checkpoint import write_builtin_parts
    from diffprune.sources.architectures import ARCH_SCHEDULERS
    from diffprune.sources.unet import build_unet

    kind = pipeline_kind(f"arch:{arch}")
    if not kind.startswith("text-to-image"):
        raise DiffPruneError(f"arch:{arch} is a {kind} model; save_pipeline_folder writes text-to-image pipelines.")
    folder = Path(folder)
    check_writable(folder, False)
    scheduler = ARCH_SCHEDULERS[arch]
    with atomic_dir(folder) as tmp:
        build_unet(arch).save_pretrained(tmp / "unet")
        index = write_builtin_parts(arch, tmp, vae=vae)
        index.update({"_diffusers_version": diffusers.__version__, "unet": ["diffusers", "UNet2DConditionModel"],
                      "scheduler": ["diffusers", scheduler["_class_name"]]})
        cls = getattr(diffusers, scheduler["_class_name"])
        cls.from_config({k: v for k, v in scheduler.items() if k != "_class_name"}).save_config(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def default_guidance(source: Source, kind: str) -> float:
    """The guidance scale pipeline.json gets unless told: the pipeline folder's own (model_index.json's
    GUIDANCE_KEY, kept by `diffprune prune` and `finetune`), else the diffusers default of its kind (GUIDANCE),
    else 1 (no guidance)."""
    from diffprune.sources.folders import _read_json

    if source.pipeline_dir is not None and kind in GUIDANCE:
        index = _read_json(source.pipeline_dir / "model_index.json")
        value = index.get(GUIDANCE_KEY) if isinstance(index, dict) else None
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise DiffPruneError(f"{str(source.pipeline_dir / 'model_index.json')!r} sets {GUIDANCE_KEY} to {value!r}; "
                                     "it must be a number >= 0 (1.5 for builtin:digits-text). Fix or remove it.")
            return float(value)
    return GUIDANCE.get(kind, 1.0)


def _read_pruning(source: dict):
    if source.get("format") != "diffprune":
        return None
    pruning = read_pruning_json(source["source"])
    pruning.pop("widths", None)
    return pruning


def load_pipeline(src, kind: str | None = None) -> Pipeline:
    """Load every part of the pipeline ``src`` (arch:NAME, a pipeline folder, or a pixel / class-conditional
    UNet folder; a resolved :class:`~diffprune.sources.resolve.Source` too), checking that the parts fit one
    another. ``kind``: its pipeline kind, when the caller has decided it already."""
    from diffprune.sources.conditioning import conditioning
    from diffprune.sources.folders import _read_json
    from diffprune.sources.loader import load_source

    source = src if isinstance(src, Source) else resolve(src)
    kind = kind or pipeline_kind(source)
    src = str(source.given)
    unet, scheduler, unet_source = load_source(src)
    cond = conditioning(unet)
    parts = dict(kind=kind, unet=unet, scheduler=scheduler, pruning=_read_pruning(unet_source),
                 num_classes=cond.num_classes)
    if source.kind == "arch":
        from diffprune.sources.architectures import VAE_SETUPS
        from diffprune.sources.vae import build_vae
        from diffprune.sources.text import build_text_encoder

        arch = source.arch
        text = build_text_encoder(arch)
        parts.update(text=text, vae=build_vae(VAE_SETUPS[arch]) if arch in VAE_SETUPS else None,
                     source={"source": src, "format": "arch", "weights": "random (seed 0)"})
    else:
        folder = source.pipeline_dir if source.whole_pipeline else Path(src)
        parts["source"] = {"source": str(folder.resolve()), "format": "pipeline" if source.whole_pipeline
                           else unet_source.get("format"), "unet": unet_source}
        if source.whole_pipeline:
            parts["source"]["pipeline_class"] = pipeline_class(source)
            if (folder / "scheduler" / "scheduler_config.json").is_file():  # the pipeline's, not a pruned unet/'s own
                parts["scheduler"] = _read_json(folder / "scheduler" / "scheduler_config.json")
            if kind in TEXT_KINDS:
                from diffprune.sources.vae import load_vae
                from diffprune.sources.folders import pipeline_component
                from diffprune.sources.text import load_text_encoder

                parts["text"] = load_text_encoder(folder)
                parts["tokenizer_dirs"] = [pipeline_component(folder, n) for n in
                                           (["tokenizer", "tokenizer_2"] if len(parts["text"].parts) == 2 else ["tokenizer"])]
                parts["vae"] = load_vae(folder) if kind != "text-to-image-pixel" else None
            elif kind == "latent":
                from diffprune.sources.vae import load_vq

                parts["vq"] = load_vq(folder)
            elif (folder / "vae").is_dir():
                from diffprune.sources.vae import load_vae

                parts["vae"] = load_vae(folder)
    pipe = Pipeline(**parts)
    _check_fits(pipe, cond, src)
    return pipe


def _check_fits(pipe: Pipeline, cond, src) -> None:
    if pipe.kind.startswith("text-to-image"):
        if not cond.text_width:
            raise DiffPruneError(f"{src!r} is a {pipe.kind} pipeline but its UNet ({cond.model_class}) takes no text; "
                                 "its unet/ does not belong to it. Put the pipeline's own (or pruned) UNet in unet/.")
        pipe.text.check_fits(cond)
        pipe.text.check_positions()
    decoder = pipe.vae if pipe.vae is not None else pipe.vq
    if decoder is not None:
        channels = decoder.config.latent_channels
        if channels != pipe.unet.config.in_channels:
            raise DiffPruneError(
                f"{src!r}: the UNet denoises {pipe.unet.config.in_channels}-channel latents but the "
                f"{'VAE' if pipe.vae is not None else 'VQ autoencoder'} decodes {channels}-channel ones; the parts come "
                "from different pipelines. Use the pipeline's own autoencoder.")


def _text_wrapper(model, layer: str, pooled: bool):
    import torch

    class TextEncoderForExport(torch.nn.Module):
        """input_ids (B, L) -> the hidden states the UNet reads (B, L, d) [, pooled text_embeds (B, P)]."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids, output_hidden_states=layer == "penultimate")
            hidden = out.last_hidden_state if layer == "last" else out.hidden_states[-2]  # (B, L, d)
            return (hidden, out.text_embeds) if pooled else hidden

    return TextEncoderForExport(model).eval()


def _decoder_wrapper(model):
    import torch

    class DecoderForExport(torch.nn.Module):
        """latent_sample (B, C, h, w), already divided by the scaling factor -> sample (B, 3, H, W).
        AutoencoderKL.decode applies post_quant_conv; VQModel.decode quantises to its codebook first."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, latent_sample):
            return self.model.decode(latent_sample).sample

    return DecoderForExport(model).eval()


def token_feeds(tokenizer, max_length: int):
    """``feeds(batch, rng, session)``: token ids as a tokenizer gives them - start, random tokens of random
    length, end, then padding - so the pooled output (read at the end token) is exercised too."""
    vocab = tokenizer.vocab_size
    special = {tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id}

    def feeds(b, rng, session):
        ids = np.full((b, max_length), tokenizer.pad_id, dtype=np.int64)
        for row in ids:
            n = int(rng.integers(0, max_length - 1))
            body = rng.integers(0, vocab, n)
            body = np.where(np.isin(body, list(special)), 1, body)  # no special token inside the prompt
            row[:n + 2] = [tokenizer.start_id, *body, tokenizer.end_id]
        return {"input_ids": ids}

    return feeds


def _latent_feeds(channels: int, size, scale: float):
    def feeds(b, rng, session):
        # latents / scaling_factor, as the runtime feeds them: the UNet's unit-variance latents rescaled.
        return {"latent_sample": (rng.standard_normal((b, channels, *size)) / scale).astype(np.float32)}

    return feeds


def export_pipeline(src, out_dir, dtype: str = "fp32", vae_dtype: str = "fp32", opset: int = 18, batch=(1, 1, 8),
                    exporter: str = "dynamo", weights: str = "external", validate_batches=None,
                    guidance_scale: float | None = None, overwrite: bool = False, progress=print,
                    fuse_attention: bool = True, step_cache: int = 0) -> dict:
    """Export every component of the pipeline ``src`` into ``out_dir`` + pipeline.json; returns pipeline.json.

    ``batch`` (min, opt, max) counts images per call: the UNet's range is doubled for classifier-free
    guidance ([uncond; cond] as one batch), and so is the text encoders' (negative and positive prompts
    encoded together). ``dtype`` applies to the text encoders and the UNet; ``vae_dtype`` to the VAE/VQ
    decoder (float32 unless asked: see the module docstring). Every component is validated against torch;
    any failure leaves nothing written. ``progress`` gets one line per component (None: silent).
    ``fuse_attention``: the UNet also gets the graph ONNX Runtime's CPU provider runs with attention fused
    (``model.ort.onnx``, export/attention.py), as :func:`diffprune.export.to_onnx`'s option.
    ``step_cache=K`` also exports the UNet's shallow graph for step caching (DeepCache, K blocks deep: see
    :func:`diffprune.export.export_unet`); pipeline.json then records it under "step_cache".
    """
    lo, opt, hi = check_options(dtype, opset, batch, weights)
    if vae_dtype not in ("fp32", "fp16"):
        raise DiffPruneError(f"vae_dtype {vae_dtype!r} is not supported; allowed: fp32 (default, what SD's VAE needs), fp16.")
    check_writable(out_dir, overwrite)
    say = progress or (lambda *a: None)
    started = time.perf_counter()
    source = resolve(src)
    kind = pipeline_kind(source)
    guidance_scale = float(guidance_scale if guidance_scale is not None else default_guidance(source, kind))
    if guidance_scale > 1 and kind not in GUIDANCE:
        raise DiffPruneError(f"guidance_scale {guidance_scale} needs a text-conditioned pipeline; a {kind} one has "
                             "nothing to guide against. Leave it out (1.0).")
    pipe = load_pipeline(source, kind)
    cfg = pipe.unet.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    guided = pipe.kind in GUIDANCE
    cfg_batch = (lo, 2 * opt, 2 * hi) if guided else (lo, opt, hi)
    common = dict(opset=opset, exporter=exporter, weights=weights, validate_batches=validate_batches)
    reports, files = {}, {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        # The decoder first: small, and an fp16 decoder that overflows fails before minutes of UNet tracing.
        decoder = pipe.vae if pipe.vae is not None else pipe.vq
        latent = None
        if decoder is not None:
            name = "vae_decoder" if pipe.vae is not None else "vq_decoder"
            scale = float(decoder.config.scaling_factor or 1.0)
            shift = getattr(decoder.config, "shift_factor", None)
            factor = 2 ** (len(decoder.config.block_out_channels) - 1)
            result = _export_decoder(decoder, name, tmp / name, size, scale, vae_dtype, (lo, opt, hi),
                                     pruning=_decoder_pruning(source, name), **common)
            reports[name], files[name] = result.model_json["validation"], result
            say(_line(name, result))
            latent = {"channels": decoder.config.latent_channels, "sample_size": list(size), "scaling_factor": scale,
                      "shift_factor": shift, "vae_factor": factor}
            image = {"channels": decoder.config.out_channels, "size": [size[0] * factor, size[1] * factor]}
        else:
            image = {"channels": cfg.out_channels, "size": list(size)}
        if pipe.text is not None:
            for i, (tokenizer, model) in enumerate(pipe.text.parts):
                name = "text_encoder" + (f"_{i + 1}" if i else "")
                pooled = pipe.text.pooled and i == len(pipe.text.parts) - 1
                result = _export_text(model, tokenizer, pipe.text.layer, pooled, tmp / name, dtype, cfg_batch, **common)
                reports[name], files[name] = result.model_json["validation"], result
                say(_line(name, result))
                tokenizer_dir = tmp / name.replace("text_encoder", "tokenizer")
                if pipe.tokenizer_dirs:
                    shutil.copytree(pipe.tokenizer_dirs[i], tokenizer_dir)
                else:
                    tokenizer.save(tokenizer_dir)  # arch: sources use the runtime's built-in CLIP BPE
        result = export_unet(pipe.unet, tmp / "unet", pipe.scheduler, pipe.source.get("unet", pipe.source), pipe.pruning,
                             dtype=dtype, batch=cfg_batch, extra={"component": "unet"}, text_tokens=pipe.text_tokens,
                             fuse_attention=fuse_attention, step_cache=step_cache, **common)
        reports["unet"], files["unet"] = result.model_json["validation"], result
        say(_line("unet", result))
        # The graphs together: the text encoders' hidden states are what the UNet graph reads.
        check_text_fits({name: f.model_json for name, f in files.items()}, str(source.given))
        unet_sha = result.model_json["source"]["weights_sha256"]
        record = _record(pipe, latent, image, guidance_scale, reports, files, unet_sha, started)
        if step_cache:  # the UNet folder holds the shallow graph; its model.json is what the runtime reads
            record["step_cache"] = result.model_json["step_cache"]
        (tmp / PIPELINE_JSON).write_text(json.dumps(record, indent=1, default=str))
    return record


def _line(name: str, result) -> str:
    meta, v = result.model_json, result.model_json["validation"]
    return (f"{name}: {result.megabytes:.1f} MB {meta['dtype']}, batch {meta['batch']['min']}..{meta['batch']['max']}, "
            f"validated on ONNX Runtime at batch {', '.join(str(c['batch']) for c in v['cases'])}: "
            f"max-abs {v['max_abs_error']:.2e}, relative {v['max_rel_error']:.2e} (allowed {v['tolerance']})")


def _export_text(model, tokenizer, layer, pooled, out, dtype, batch, opset, exporter, weights, validate_batches):
    import torch

    from .validate import validate_graph

    model = model.float().eval()
    wrapper = _text_wrapper(model, layer, pooled)
    feeds = token_feeds(tokenizer, tokenizer.max_length)
    example = {"input_ids": torch.from_numpy(feeds(2, np.random.default_rng(0), None)["input_ids"])}
    outputs = ["hidden_states"] + (["text_embeds"] if pooled else [])
    with torch.no_grad(), _quiet_exporter():
        proto = _export(wrapper, example, outputs, opset, batch, False, exporter)
    tol = TOLERANCE_FP32["text_encoder"] if dtype == "fp32" else None

    def check(path, batches):
        return validate_graph(path, wrapper, feeds, dtype, batches, tolerance=tol, what="text encoder graph")

    cfg = model.config
    meta = {"component": "text_encoder", "architecture": type(model).__name__,
            "text": {"max_length": tokenizer.max_length, "width": cfg.hidden_size, "layer": layer,
                     "pooled_width": cfg.projection_dim if pooled else None, "vocab_size": cfg.vocab_size},
            "source": {"weights_sha256": weights_sha256(model)}}
    return write_graph(proto, out, check, meta, dtype=dtype, batch=batch, opset=opset, exporter=exporter,
                       validate_batches=validate_batches, weights=weights)


def _decoder_pruning(source: Source, name: str) -> dict | None:
    """pruning.json of a pipeline folder's vae/ or vqvae/ whose decoder `diffprune prune --components decoder`
    pruned (its record goes into the decoder's model.json and pipeline.json), else None."""
    from diffprune.sources.vae import read_decoder_pruning

    if source.pipeline_dir is None:
        return None
    info = read_decoder_pruning(source.pipeline_dir / ("vae" if name == "vae_decoder" else "vqvae"))
    return None if info is None else {k: v for k, v in info.items() if k != "widths"}


def _export_decoder(model, name, out, size, scale, dtype, batch, opset, exporter, weights, validate_batches,
                    pruning=None):
    import torch

    from .validate import validate_graph

    model = model.float().eval()
    wrapper = _decoder_wrapper(model)
    channels = model.config.latent_channels
    feeds = _latent_feeds(channels, size, scale)
    example = {"latent_sample": torch.from_numpy(feeds(2, np.random.default_rng(0), None)["latent_sample"])}
    with torch.no_grad(), _quiet_exporter():
        proto = _export(wrapper, example, ["sample"], opset, batch, False, exporter, spatial=SPATIAL)
    tol = TOLERANCE_FP32[name] if dtype == "fp32" else None

    def check(path, batches):
        try:
            return validate_graph(path, wrapper, feeds, dtype, batches, tolerance=tol, what=f"{name} graph")
        except DiffPruneError as e:
            if dtype != "fp16":
                raise
            raise DiffPruneError(
                f"{e} The {name.replace('_', ' ')} does not hold in float16: Stable Diffusion's VAE decoder overflows "
                "fp16 (activations past 65504 give NaN and black images), which is why it is exported in float32 "
                "unless asked. Export it in fp32 (drop --vae-fp16 / vae_dtype='fp16'; the UNet and text encoders can "
                "stay fp16), or use a VAE fine-tuned to stay in fp16 range.") from None

    meta = {"component": name, "architecture": type(model).__name__, "in_channels": channels,
            "sample_size": list(size), "scaling_factor": scale,
            "source": {"weights_sha256": weights_sha256(model)}, "pruning": pruning}
    return write_graph(proto, out, check, meta, dtype=dtype, batch=batch, opset=opset, exporter=exporter,
                       validate_batches=validate_batches, weights=weights)


def _record(pipe, latent, image, guidance_scale, reports, files, unet_sha, started) -> dict:
    from diffprune.sources.unet import versions

    from .onnx import _onnx_versions

    text = None
    if pipe.text is not None:
        text = {"max_length": pipe.text.max_length, "layer": pipe.text.layer,
                "widths": [m.config.hidden_size for _, m in pipe.text.parts], "pooled_width": pipe.text.pooled_width,
                "pad_tokens": [t.pad_token for t, _ in pipe.text.parts]}
    guided = pipe.kind in GUIDANCE
    record = {
        "format": PIPELINE_FORMAT,
        "kind": pipe.kind,
        "components": pipe.components,
        "tokenizers": {n: n.replace("text_encoder", "tokenizer") for n in pipe.components if n.startswith("text_encoder")},
        "scheduler": pipe.scheduler,
        "guidance": {"scale": guidance_scale, "negative_prompt": "" if guided else None},
        "latent": latent,
        "image": image,
        "text": text,
        "precision": {n: f.model_json["dtype"] for n, f in files.items()},
        "batch": {n: f.model_json["batch"] for n, f in files.items()},
        "source": {**pipe.source, "unet_weights_sha256": unet_sha},
        "pruning": pipe.pruning,
        # the decoder's pruning.json record (diffprune.pruning.decoder) when vae/ or vqvae/ holds a pruned one
        "decoder_pruning": next((f.model_json.get("pruning") for n, f in files.items() if n.endswith("_decoder")), None),
        "versions": {**versions(), **_onnx_versions()},
        "validation": reports,
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    if pipe.kind == "text-to-image-xl":
        h, w = image["size"]
        record["xl"] = {"add_time_ids": [h, w, 0, 0, h, w]}  # original size, crop (0, 0), target size
    if pipe.kind == "class-conditional":
        record["num_classes"] = pipe.num_classes
    return record
