"""Loading what a source names (see resolve.py for what a source is): the UNet with its noise schedule
(``load_source``), a pipeline component when first needed (``FromSource``), hub downloads."""

from pathlib import Path

from ..errors import DiffPruneError
from .architectures import ARCH_SCHEDULERS, DEFAULT_SCHEDULER, TEXT_SETUPS, VAE_SETUPS
from .folders import _read_json, _scheduler_config
from .resolve import resolve
from .unet import build_unet, check_unet_config, unet_class


def load_source(src, device="cpu"):
    """Load the UNet a source names (see :func:`resolve`): ``(unet, scheduler_config, source_info)``.

    The noise schedule is the one the source carries (a pipeline's ``scheduler/``, a folder's
    ``scheduler_config.json``, a built-in architecture's), else the paper's DDPM schedule.
    """
    source = resolve(src)
    if source.kind == "object":
        return src, dict(DEFAULT_SCHEDULER), {"source": source.label}
    if source.kind == "arch":
        arch = source.arch
        return build_unet(arch), dict(ARCH_SCHEDULERS.get(arch, DEFAULT_SCHEDULER)), {"source": source.label, "weights": "random (seed 0)"}
    if source.kind == "hub":
        return _load_hub(str(src), device)
    path = source.unet
    if source.pruned:
        from .checkpoint import load

        model = load(path, device=device)
        return model, _scheduler_config(path), {"source": source.label, "format": "diffprune"}
    config = _read_json(path / "config.json")
    check_unet_config(config, path / "config.json")
    cls = unet_class(config, path / "config.json")
    try:
        model = cls.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffPruneError(
            f"Could not load the diffusers UNet in {str(path)!r}: {e}. Check that its weights file "
            "is complete and matches config.json."
        ) from None
    return model.to(device).eval(), _scheduler_config(path), {"source": source.label, "format": "diffusers"}


class FromSource:
    """A pipeline component of a model source, loaded when first needed (``load()``), since most
    runs need neither: ``component`` is "text_encoder" (diffprune.sources.text.TextEncoder) or "vae"
    (AutoencoderKL, or an LDM pipeline's VQModel from vqvae/). ``arch:NAME`` gives the built-in pipeline's (random weights), a pipeline folder
    its subfolder (an error if missing), a bare or in-memory UNet none (None)."""

    COMPONENTS = ("text_encoder", "vae")

    def __init__(self, src, component: str, device="cpu"):
        if component not in self.COMPONENTS:
            raise ValueError(f"component {component!r}; allowed: {', '.join(self.COMPONENTS)}")
        self.src, self.component, self.device = src, component, device

    def _source(self):
        return resolve(self.src) if isinstance(self.src, (str, Path)) else None

    def _pipeline(self):
        source = self._source()
        return source.pipeline_dir if source is not None else None

    def available(self) -> bool:
        """Whether the source has this component (without loading it)."""
        source = self._source()
        if source is None:
            return False
        if source.kind == "arch":
            return source.arch in (TEXT_SETUPS if self.component == "text_encoder" else VAE_SETUPS)
        pipeline = source.pipeline_dir
        return pipeline is not None and any((pipeline / name).is_dir() for name in self._folders())

    def text_tokens(self) -> int | None:
        """For the text encoder: the tokens its tokenizer pads prompts to (a pipeline folder's tokenizer/
        model_max_length; CLIP's 77 for arch:), read without loading weights; None without one."""
        source = self._source()
        if self.component != "text_encoder" or source is None:
            return None
        if source.kind == "arch":
            return 77 if source.arch in TEXT_SETUPS else None  # the built-in encoders are CLIP's length
        from .folders import tokenizer_length

        return tokenizer_length(source.pipeline_dir) if source.pipeline_dir is not None else None

    def _folders(self) -> tuple:
        # An LDMPipeline's autoencoder is a VQModel in vqvae/; Stable Diffusion's an AutoencoderKL in vae/.
        return ("vae", "vqvae") if self.component == "vae" else (self.component,)

    def load(self):
        source = self._source()
        if source is None:
            return None
        if source.kind == "arch":
            arch = source.arch
            if self.component == "text_encoder":
                from .text import build_text_encoder

                built = build_text_encoder(arch)
                if built is not None:
                    for _, model in built.parts:
                        model.to(self.device)
                return built
            from .architectures import VAE_SETUPS
            from .vae import build_vae

            return build_vae(VAE_SETUPS[arch]).to(self.device) if arch in VAE_SETUPS else None
        path = source.pipeline_dir
        if path is None:
            return None
        if self.component == "text_encoder":
            from .text import load_text_encoder

            encoder = load_text_encoder(path)
            for _, model in encoder.parts:
                model.to(self.device)
            return encoder
        from .vae import load_vae, load_vq

        if self.component == "vae" and not (path / "vae").is_dir() and (path / "vqvae").is_dir():
            return load_vq(path).to(self.device)
        return load_vae(path).to(self.device)


def check_hub_id(repo_id: str) -> None:
    """Fail in a second, not after minutes of retries, when a source is neither a folder nor reachable.

    One metadata request decides: the repository exists (go on), it does not (a mistyped path,
    most often), or the hub cannot be reached. With ``HF_HUB_OFFLINE=1`` nothing is asked and only
    the local hub cache is used.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    first = Path(repo_id.split("/")[0])
    looks_local = first.is_dir()
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except GatedRepoError:
        return  # it exists; the download below reports the access problem in the hub's own words
    except RepositoryNotFoundError:
        raise DiffPruneError(
            f"Model source {repo_id!r} is not an existing folder{' (though ' + str(first) + '/ is one)' if looks_local else ''}, "
            "and the hub has no repository of that name. Check the path (a local model is a folder with "
            "config.json, model_index.json or pruning.json) or the hub id."
        ) from None
    except Exception as e:  # connection, DNS, proxy, timeout: one line is enough
        raise DiffPruneError(
            f"Model source {repo_id!r} is not an existing folder, and the hub cannot be reached to look it up as a "
            f"hub id ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). If it is a local folder, check "
            "the path; if it is a hub id, connect, or download it elsewhere and pass its folder (or set "
            "HF_HUB_OFFLINE=1 to use the local hub cache)."
        ) from None


def _load_hub(repo_id: str, device):
    """A UNet from the hub: the repository's own config.json, else a pipeline's unet/ (SD, SDXL)."""
    from diffusers import DDPMScheduler, UNet2DModel

    check_hub_id(repo_id)
    errors = []
    for subfolder in (None, "unet"):
        try:
            config = UNet2DModel.load_config(repo_id, subfolder=subfolder)  # reads config.json, any class
            model = unet_class(config, f"{repo_id}/{subfolder or ''}config.json").from_pretrained(repo_id, subfolder=subfolder)
        except DiffPruneError:
            raise
        except Exception as e:  # hub/network errors come in many types; we report them together
            errors.append(f"{subfolder or '.'}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        try:
            scheduler = dict(DDPMScheduler.load_config(repo_id, subfolder="scheduler" if subfolder else None))
        except Exception:
            scheduler = dict(DEFAULT_SCHEDULER)
        return model.to(device).eval(), scheduler, {"source": repo_id, "format": "hub"}
    raise DiffPruneError(
        f"Could not load a UNet from the hub id {repo_id!r} ({'; '.join(errors)}). Without network "
        "access, download the model elsewhere and pass its local folder instead."
    )
