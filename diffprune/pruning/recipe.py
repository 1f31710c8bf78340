"""One recipe from a model source to a saved pruned model: load -> prune -> save with its pruning.json record.

``diffprune prune``, the demo and select's sweep all go through it, so a pruned folder records the same things
whichever made it: the source (as ``load_source`` describes it) and the :class:`PruneReport` (less its per-layer
table: pruning.json's ``widths`` holds the pruned widths, config.json the dense ones).
"""

from dataclasses import dataclass
from pathlib import Path

from .importance import DEFAULT_METHOD
from .pruner import PruneReport


@dataclass
class Pruned:
    """A pruned UNet with what is needed to save it: its report, noise schedule, and the source it came from
    (``src`` as given, whose pipeline's other components a saved pipeline folder carries)."""

    model: object
    report: PruneReport
    scheduler_config: dict
    source: dict
    src: object
    threads: dict | None = None  # the torch threads and wait policy it was pruned with (diffprune.threads)

    def record(self) -> dict:
        """pruning.json's part that says what made the model."""
        report = {k: v for k, v in self.report.to_dict().items() if k != "layer_widths"}
        return {"source": self.source, "pruning": {**report, **({"threads": self.threads["threads"],
                                                                   "thread_policy": self.threads} if self.threads else {})}}

    def save(self, out, overwrite: bool = False) -> Path:
        """Write the pruned model at ``out`` (atomically; a pipeline folder when the source is a pipeline)."""
        from ..sources.checkpoint import save

        return save(self.model, out, info=self.record(), scheduler_config=self.scheduler_config, overwrite=overwrite,
                    pipeline=self.src)


def prune_source(src, device="cpu", check=None, threads: int | None = None, **options) -> Pruned:
    """Load ``src`` (any model source: diffprune.sources.resolve) on ``device`` and prune it with ``options``
    (the keywords of :func:`diffprune.prune`). The source's text encoder and VAE are passed on, loaded only if
    the calibration needs them. ``check(model)``, when given, may refuse the loaded model before any work.
    ``threads``: torch CPU threads (default: the cores this process may use), under diffprune.threads' policy."""
    from ..sources.loader import FromSource, load_source
    from ..threads import apply_thread_policy
    from .pruner import prune

    thread_policy = apply_thread_policy(threads)

    model, scheduler_config, source = load_source(src, device=device)
    if check is not None:
        check(model)
    options.setdefault("text_encoder", FromSource(src, "text_encoder", device))
    options.setdefault("vae", FromSource(src, "vae", device))
    pruned, report = prune(model, scheduler_config=scheduler_config, **options)
    return Pruned(pruned, report, scheduler_config, source, src, thread_policy)


COMPONENTS = ("unet", "decoder")  # what `diffprune prune --components` may name


def check_components(components) -> tuple:
    """``components`` (a comma-separated str or a sequence) as a tuple of COMPONENTS, in their order."""
    from ..errors import DiffPruneError

    names = [c.strip() for c in components.split(",")] if isinstance(components, str) else list(components)
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown or not names:
        raise DiffPruneError(f"Components {components!r}: {', '.join(map(repr, unknown)) or 'none'} not known; allowed: "
                             f"{', '.join(COMPONENTS)} (comma-separated, e.g. unet,decoder), the decoder being a "
                             "pipeline's VAE (or VQ) decoder.")
    return tuple(c for c in COMPONENTS if c in names)


@dataclass
class PrunedDecoder:
    """A pipeline's autoencoder with its decoder pruned, its report and the source it came from."""

    model: object
    report: object  # diffprune.pruning.decoder.DecoderPruneReport
    source: str
    folder: str  # the pipeline subfolder it is saved in: vae or vqvae

    def record(self) -> dict:
        report = {k: v for k, v in self.report.to_dict().items() if k != "layer_widths"}
        return {"source": self.source, "component": self.report.component, "pruning": report,
                "macs": self.report.macs_after, "dense_macs": self.report.macs_before}


def prune_source_decoder(src, device="cpu", method=DEFAULT_METHOD, ratio=None, target_macs=None, data=None,
                         num_images=64, micro_batch=16, round_to=8, seed=0, resize="bilinear", progress=True,
                         unet=None, scheduler_config=None) -> PrunedDecoder:
    """Prune the decoder of the pipeline ``src`` names (its vae/ or vqvae/; arch:NAME's built-in VAE). ``data``:
    images whose encoder latents calibrate it, or generate:N (latents drawn by the pipeline's UNet, ``unet``
    when given, else the source's). MACs are counted at the UNet's latent size."""
    from ..errors import DiffPruneError
    from ..sources.loader import FromSource, load_source
    from ..sources.resolve import resolve
    from ..sources.unet import sample_size
    from .calibration import generate_count
    from .decoder import (COMPONENT_FOLDERS, check_decoder_options, decoder_latents, generated_latents,
                          prune_decoder)

    check_decoder_options(method, ratio, target_macs, round_to, data)
    parts = FromSource(src, "vae", device)
    if not parts.available():
        raise DiffPruneError(f"{str(src)!r} has no decoder to prune: decoder pruning takes a pipeline with an "
                             "autoencoder (a folder with vae/ or vqvae/, or arch:NAME of a latent text-to-image "
                             "pipeline such as arch:tiny-sd). Prune its UNet alone (--components unet).")
    if unet is None:
        unet, scheduler_config, _ = load_source(src, device=device)
    autoencoder = parts.load()
    latents, description = None, ""
    from .importance import CRITERIA

    if CRITERIA[method].needs_data:
        if isinstance(data, str) and data.startswith("generate:"):
            latents, description = generated_latents(unet, scheduler_config, autoencoder, generate_count(data), seed,
                                                     progress, text_encoder=FromSource(src, "text_encoder", device).load()
                                                     if FromSource(src, "text_encoder").available() else None)
        else:
            latents, description = decoder_latents(autoencoder, data, num_images, seed, resize, micro_batch)
    model, report = prune_decoder(autoencoder, method=method, ratio=ratio, target_macs=target_macs, latents=latents,
                                  round_to=round_to, seed=seed, micro_batch=micro_batch,
                                  latent_hw=sample_size(unet), calibration=description)
    source = resolve(src)
    label = str(source.pipeline_dir.resolve()) if source.pipeline_dir is not None else source.label
    return PrunedDecoder(model, report, label, COMPONENT_FOLDERS[type(model).__name__])


def save_pipeline(out, src, unet: Pruned | None = None, decoder: PrunedDecoder | None = None,
                  overwrite: bool = False) -> Path:
    """Write the pipeline ``src`` to ``out`` (atomically) with its pruned parts: ``unet`` in unet/ (as
    Pruned.save does), ``decoder`` in its vae/ or vqvae/ (diffprune.sources.vae.save_autoencoder); what is not
    given is carried over as the source has it."""
    import json
    import os
    import shutil

    from .._io import atomic_dir

    with atomic_dir(out, overwrite=overwrite) as tmp:
        stage = tmp / "pipeline"
        if unet is not None:
            unet.save(stage)
        else:
            _copy_pipeline(src, stage)
        if decoder is not None:
            from ..sources.vae import save_autoencoder

            shutil.rmtree(stage / decoder.folder, ignore_errors=True)
            save_autoencoder(decoder.model, stage / decoder.folder, decoder.record())
            index = json.loads((stage / "model_index.json").read_text())
            index["_diffprune_decoder"] = (f"{decoder.folder}/ holds a pruned decoder (pruning.json); load it with "
                                           "diffprune, not diffusers")
            (stage / "model_index.json").write_text(json.dumps(index, indent=1))
        for entry in list(stage.iterdir()):
            os.replace(entry, tmp / entry.name)
        stage.rmdir()
    return Path(out)


def _copy_pipeline(src, stage: Path) -> None:
    """The pipeline ``src`` as it is into ``stage``: a folder copied, arch:NAME's built-in pipeline written."""
    import json
    import shutil

    from ..errors import DiffPruneError
    from ..sources.architectures import ARCH_SCHEDULERS, DEFAULT_SCHEDULER
    from ..sources.checkpoint import write_builtin_parts
    from ..sources.resolve import resolve
    from ..sources.unet import build_unet, versions

    source = resolve(src)
    if source.pipeline_dir is not None:
        shutil.copytree(source.pipeline_dir, stage)
        return
    if source.pipeline is None:
        raise DiffPruneError(f"{str(src)!r} is not a pipeline; give a pipeline folder or arch:NAME.")
    arch = source.arch
    stage.mkdir()
    unet = build_unet(arch)
    unet.save_pretrained(stage / "unet")
    scheduler = ARCH_SCHEDULERS.get(arch, DEFAULT_SCHEDULER)
    (stage / "scheduler").mkdir()
    (stage / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=1))
    index = write_builtin_parts(arch, stage)
    index.update({"_diffusers_version": versions().get("diffusers", "?"), "unet": ["diffusers", type(unet).__name__],
                  "scheduler": ["diffusers", scheduler["_class_name"]]})
    (stage / "model_index.json").write_text(json.dumps(index, indent=1))
