"""What a model source is, decided in one place: ``resolve(src) -> Source``.

A source is what a user names as ``SRC`` (and Python passes as ``src``):

    arch:NAME         a built-in architecture (sources/architectures.py), random weights (seed 0)
    builtin:NAME      a model shipped in the package (diffprune/assets/NAME): resolved to its folder
    a folder          a pruned diffprune UNet (pruning.json), a diffusers UNet (config.json), or a diffusers
                      pipeline (model_index.json; its UNet in unet/), also when given its unet/ subfolder
    owner/name        a hub id (looked up only when loaded)
    a UNet instance   an in-memory UNet2DModel / UNet2DConditionModel

As diffusers' ``from_pretrained`` is the one entry for hub ids, folders and subfolders, every loader,
exporter and command classifies a source here, from files and configs only (no weights are read, nothing
is downloaded); ``loader.py`` loads what this names. A source that is none of these is a DiffPruneError
naming what was given and what is allowed.
"""

from dataclasses import dataclass
from pathlib import Path

from ..errors import DiffPruneError
from ..runtime.formats import KINDS, PRUNING_JSON
from .architectures import ARCHITECTURES, TEXT_SETUPS, VAE_SETUPS
from .folders import _read_json, builtin_path, pipeline_component

# What the UNet of a source is stored as.
UNET_KINDS = ("arch", "pruned", "diffusers", "hub", "object")

# model_index.json's _class_name -> the pipeline kind; other pipelines (img2img, upscalers, Kandinsky, Flux...)
# are refused.
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "text-to-image", "StableDiffusionXLPipeline": "text-to-image-xl",
    "LDMPipeline": "latent", "DDPMPipeline": "pixel", "DDIMPipeline": "pixel",
}
# Built-in latent UNets whose autoencoder is not built in: their pipeline cannot be exported from arch:.
NO_DECODER = {"ldm-celebahq-256": "its VQ-f4 autoencoder"}


@dataclass(frozen=True)
class Source:
    """A classified model source. ``kind`` is how its UNet is stored (one of UNET_KINDS); ``unet`` the UNet's
    folder (None for arch, hub and in-memory sources); ``pipeline_dir`` the diffusers pipeline folder the UNet
    belongs to (the folder given, or the parent of a given unet/), else None; ``arch`` the built-in name."""

    given: object
    kind: str
    unet: Path | None = None
    pipeline_dir: Path | None = None
    arch: str | None = None
    whole_pipeline: bool = False  # the source names a pipeline folder itself, not its unet/

    @property
    def pipeline(self):
        """``("folder", Path)`` for a UNet of a pipeline folder, ``("arch", NAME)`` for a built-in architecture
        whose pipeline has a text encoder or VAE, else None (a bare UNet)."""
        if self.pipeline_dir is not None:
            return ("folder", self.pipeline_dir)
        if self.kind == "arch" and (self.arch in TEXT_SETUPS or self.arch in VAE_SETUPS):
            return ("arch", self.arch)
        return None

    @property
    def pruned(self) -> bool:
        return self.kind == "pruned"

    @property
    def label(self) -> str:
        """The source as records name it: ``arch:NAME``, a hub id, or the UNet folder's absolute path."""
        if self.kind == "arch":
            return f"arch:{self.arch}"
        if self.kind == "hub":
            return str(self.given)
        if self.kind == "object":
            return f"in-memory {type(self.given).__name__}"
        return str(self.unet.resolve())


def resolve(src) -> Source:
    """Classify ``src`` (see the module doc); a clear DiffPruneError when it is none of the allowed kinds."""
    if not isinstance(src, (str, Path)):
        if type(src).__name__ in ("UNet2DModel", "UNet2DConditionModel"):
            return Source(src, "object")
        raise DiffPruneError(
            f"A model source is a path, a hub id, arch:NAME or builtin:NAME (or a diffusers UNet in Python); got a "
            f"{type(src).__name__}. Pass one of those.")
    given = src
    src = str(src)
    if src.startswith("builtin:"):
        src = str(builtin_path(src))
    if src.startswith("arch:"):
        from .unet import check_arch

        arch = src[len("arch:"):]
        check_arch(arch)
        return Source(given, "arch", arch=arch)
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise DiffPruneError(
                f"Model source {src!r} is a file; a model is a folder. Give a diffusers folder "
                "(config.json + diffusion_pytorch_model.safetensors), a pruned diffprune folder, "
                "a pipeline folder with a unet/ subfolder, a hub id, or arch:NAME."
            )
        pipeline_dir, unet, whole = None, path, False
        if not (path / PRUNING_JSON).is_file() and (path / "model_index.json").is_file():
            pipeline_dir, unet, whole = path, pipeline_component(path, "unet"), True
        elif path.name == "unet" and (path.parent / "model_index.json").is_file():
            pipeline_dir = path.parent
        if (unet / PRUNING_JSON).is_file():
            return Source(given, "pruned", unet=unet, pipeline_dir=pipeline_dir, whole_pipeline=whole)
        if not (unet / "config.json").is_file():
            raise DiffPruneError(
                f"Folder {src!r} holds no config.json, model_index.json or pruning.json, so it is not "
                "a diffusers model, pipeline or pruned diffprune model. Point to the folder that holds "
                "config.json (for a pipeline, its unet/ subfolder)."
            )
        return Source(given, "diffusers", unet=unet, pipeline_dir=pipeline_dir, whole_pipeline=whole)
    if src.count("/") == 1 and not src.startswith((".", "/")):
        return Source(given, "hub")
    raise DiffPruneError(
        f"Model source {src!r} is neither an existing folder nor a hub id (owner/name) nor arch:NAME "
        f"(built-in: {', '.join(sorted(ARCHITECTURES))}). Check the path."
    )


def pipeline_source(src):
    """The pipeline a UNet source belongs to (:attr:`Source.pipeline`); None for anything that is not a
    source (an in-memory model, None)."""
    if not isinstance(src, (str, Path)):
        return None
    return resolve(src).pipeline


def _pipeline_class(folder: Path) -> str:
    index = _read_json(folder / "model_index.json")
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in PIPELINE_CLASSES:
        raise DiffPruneError(
            f"The pipeline folder {str(folder)!r} is a {cls!r} (model_index.json's _class_name); diffprune exports "
            f"{', '.join(PIPELINE_CLASSES)} pipelines (kinds: {', '.join(KINDS)}). Give one of those, or export its "
            "UNet alone with --unet-only (unet_only=True).")
    return cls


def pipeline_class(source: Source) -> str | None:
    """model_index.json's ``_class_name`` of a pipeline folder source (checked against PIPELINE_CLASSES), else None."""
    return _pipeline_class(source.pipeline_dir) if source.pipeline_dir is not None else None


def pipeline_kind(src) -> str:
    """The kind of pipeline ``src`` is (one of the runtime's KINDS), from configs only (no weights are read)."""
    from .conditioning import conditioning

    source = src if isinstance(src, Source) else resolve(src)
    if source.kind == "arch":
        arch = source.arch
        cond = conditioning(ARCHITECTURES[arch])
        if arch in TEXT_SETUPS:
            if TEXT_SETUPS[arch][1] == "penultimate":
                return "text-to-image-xl"
            return "text-to-image" if arch in VAE_SETUPS else "text-to-image-pixel"
        if cond.text_width:
            raise DiffPruneError(f"arch:{arch} is text-conditioned, but no text encoder is built in for it.")
        if arch in NO_DECODER:
            raise DiffPruneError(
                f"arch:{arch} is a latent UNet, but {NO_DECODER[arch]} is not built in, so its pipeline cannot be "
                "exported from arch:. Give the LDM pipeline folder (unet/ + vqvae/ + scheduler/), or export the UNet "
                "alone with --unet-only (unet_only=True).")
        return "class-conditional" if cond.num_classes else "pixel"
    if source.whole_pipeline:
        kind = PIPELINE_CLASSES[_pipeline_class(source.pipeline_dir)]
        if kind == "pixel" and conditioning(_read_json(source.unet / "config.json")).num_classes:
            return "class-conditional"
        if kind == "text-to-image" and not (source.pipeline_dir / "vae").is_dir():
            return _pixel_text_kind(source)
        return kind
    if source.kind in ("pruned", "diffusers"):
        cond = conditioning(_read_json(source.unet / "config.json"))
        if cond.text_width:
            raise DiffPruneError(
                f"{str(source.given)!r} is a text-conditioned UNet on its own; a text-to-image pipeline also needs its text "
                "encoder(s), tokenizer(s) and VAE. Give the pipeline folder (model_index.json, with the pruned "
                "UNet in unet/), or export just the UNet with --unet-only (unet_only=True).")
        return "class-conditional" if cond.num_classes else "pixel"
    raise DiffPruneError(f"{str(source.given)!r} is not a pipeline; give a pipeline folder (model_index.json) or arch:NAME.")


def _pixel_text_kind(source: Source) -> str:
    """A StableDiffusionPipeline folder without vae/: text-to-image in pixel space when its UNet denoises images
    (in_channels 1 or 3, as builtin:digits-text's 28x28 grey digits), else a latent pipeline missing its VAE."""
    channels = _read_json(source.unet / "config.json").get("in_channels")
    if channels in (1, 3):
        return "text-to-image-pixel"
    raise DiffPruneError(
        f"The pipeline folder {str(source.pipeline_dir)!r} has no vae/ subfolder, and its UNet denoises "
        f"{channels}-channel latents, which need the VAE to become images. Copy the whole pipeline (vae/ included); "
        "a pipeline without a VAE is exported only when its UNet works on pixels (1 or 3 channels).")


def exports_as_pipeline(src) -> bool:
    """Whether ``diffprune export`` gives ``src`` the pipeline layout: pipelines (text, class-conditional, latent
    with a decoder) do, builtin:digits-text too (a pixel text-to-image pipeline); a pixel UNet (builtin:digits-ddpm),
    a hub id and a latent arch without a built-in decoder keep the single-UNet layout. Sources that do not resolve
    keep it too, so that the UNet path names the problem."""
    if isinstance(src, str) and src.startswith("arch:"):
        if src[len("arch:"):] in NO_DECODER:
            return False
    elif isinstance(src, str) and src.startswith("builtin:"):
        try:
            resolve(src)
        except DiffPruneError:
            return False  # an unknown builtin: the UNet path names the problem
    elif not Path(str(src)).is_dir():
        return False  # hub ids, files and typos
    return pipeline_kind(src) != "pixel"
