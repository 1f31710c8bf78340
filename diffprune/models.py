"""Where UNets come from: built-in architectures, diffusers folders, pipeline folders, hub ids and
pruned folders.

Built-in architectures (``arch:NAME``) are built from config with seeded random weights: the
CIFAR-10 DDPM one is the paper's model, ``sd15``/``sd21-base``/``sdxl`` are the Stable Diffusion UNets
at real size (for structure and MACs; nothing is downloaded), the tiny ones keep the test suite fast
(as timm registers tiny test models). An entry without ``_class_name`` is a ``UNet2DModel``.
"""

import contextlib
import io
import json
from pathlib import Path

from .errors import DiffPruneError

# google/ddpm-cifar10-32, the model of the paper's CIFAR-10 experiments (35.7M params, 6.1G MACs).
DDPM_CIFAR10_32 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    mid_block_scale_factor=1, time_embedding_type="positional",
)

ARCHITECTURES = {
    "ddpm-cifar10-32": DDPM_CIFAR10_32,
    # A pixel UNet without attention: two resolutions, GroupNorm of 8 groups.
    "tiny": dict(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ),
    # The shipped reference model's architecture: 28x28 digits, 1.1M params, attention at 7x7.
    # Sized to train on a 2-core CPU (about 2 steps/s at batch 32); see the model card.
    "digits": dict(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16,
    ),
    # Multi-head attention (64 channels / head dim 16 = 4 heads) in the low-resolution blocks.
    "tiny-attn": dict(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16,
    ),
    # "tiny" with a class embedding: 10 classes (the digits), labels added to the time embedding.
    "tiny-class": dict(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=10,
    ),
    # A text-conditioned digits model (Evidence 2 of the conditional-models work; shipped as
    # builtin:digits-text): "digits" with cross-attention to a tiny frozen CLIP text encoder (32 wide),
    # at 14x14 and 7x7; 2 heads (attention_head_dim counts heads in UNet2DConditionModel configs).
    "digits-text": dict(
        _class_name="UNet2DConditionModel", sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8,
    ),
    # SD-1.x-like: 4 latent channels, self- and cross-attention with GEGLU feed-forward (SD's
    # BasicTransformerBlock), conv proj_in/proj_out. attention_head_dim is the head COUNT in SD's
    # configs (a diffusers naming quirk kept for compatibility): 2 heads of 16 and of 32 channels.
    "tiny-sd": dict(
        _class_name="UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=2,
        norm_num_groups=8,
    ),
    # SDXL-like (the layout of diffusers' own SDXL test UNet, widened to GroupNorm's 8 groups): text_time
    # added conditioning (pooled text 32 + 6 time ids x 8), linear proj_in/proj_out, 2 transformer layers.
    "tiny-sdxl": dict(
        _class_name="UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=32, norm_num_groups=8,
    ),
    # runwayml/stable-diffusion-v1-5 unet/config.json (859.5M params); CLIP ViT-L/14 text, 768 wide.
    # CompVis/ldm-celebahq-256: the latent DDPM the public Diff-Pruning code prunes (ldm_prune.py), a pixel-style
    # UNet2DModel over the 64x64x3 latents of a VQ autoencoder (f=4).
    "ldm-celebahq-256": dict(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(224, 448, 672, 896),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=32,
    ),
    "sd15": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False,
        mid_block_scale_factor=1,
    ),
    # stabilityai/stable-diffusion-2-1-base unet/config.json (865.9M params); OpenCLIP ViT-H text,
    # 1024 wide; 64-channel heads (5, 10, 20, 20 of them), linear proj_in/proj_out.
    "sd21-base": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True,
        freq_shift=0, center_input_sample=False, mid_block_scale_factor=1, upcast_attention=False,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.57B params): 128x128 latents,
    # both text encoders' hidden states concatenated (768 + 1280 = 2048), pooled OpenCLIP-G text (1280)
    # + 6 time ids x 256 = 2816 into add_embedding, 1/2/10 transformer layers per resolution.
    "sdxl": dict(
        _class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        norm_eps=1e-5, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
        center_input_sample=False, mid_block_scale_factor=1, upcast_attention=False,
    ),
}

# Models shipped in the package (diffprune/assets/NAME, each with a model card): the pixel digits DDPM and
# the text-conditioned digits pipeline (a pipeline folder: unet/, text_encoder/, tokenizer/, scheduler/).
BUILTIN_MODELS = ("builtin:digits-ddpm", "builtin:digits-text")

# Noise schedules of the built-in architectures' pipelines (arch: sources carry no scheduler folder;
# load_source gives them, so pruning, fine-tuning and export of arch:sd15 all use SD's). SD 1.x/2.x
# ship PNDM with these betas; DDIM with the same betas and offset is the runtime's equivalent (diffusers'
# DDIMScheduler.from_config(pipe.scheduler.config)). SDXL ships EulerDiscreteScheduler.
_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")
SD_SCHEDULER = {"_class_name": "DDIMScheduler", **_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False}
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", **_SD_BETAS, "interpolation_type": "linear",
                  "use_karras_sigmas": False}
ARCH_SCHEDULERS = {"sd15": SD_SCHEDULER, "sd21-base": SD_SCHEDULER, "tiny-sd": SD_SCHEDULER,
                   "sdxl": SDXL_SCHEDULER, "tiny-sdxl": SDXL_SCHEDULER}

# The denoising schedule of the paper's DDPM models; used when a source carries no scheduler config.
DEFAULT_SCHEDULER = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
    "clip_sample": True, "variance_type": "fixed_large",
}


def unet_class(config: dict, where="the config"):
    """The diffusers class a UNet config names (``_class_name``; UNet2DModel when absent)."""
    import diffusers

    from .conditioning import MODEL_CLASSES

    cls = config.get("_class_name", "UNet2DModel")
    if cls not in MODEL_CLASSES:
        raise DiffPruneError(
            f"{str(where)!r} describes a {cls!r}, but diffprune prunes {' and '.join(MODEL_CLASSES)} (pixel and "
            "latent DDPMs, class-conditional UNets, Stable Diffusion and SDXL UNets). Point to one of those "
            "(for a pipeline, its folder or its unet/ subfolder)."
        )
    return getattr(diffusers, cls)


def build_unet(arch: str, seed: int = 0):
    """Build a built-in architecture with seeded random weights."""
    import torch

    if arch not in ARCHITECTURES:
        raise DiffPruneError(
            f"Unknown built-in architecture {arch!r}. Known: {', '.join(sorted(ARCHITECTURES))}. "
            "Use arch:NAME with one of these, or give a diffusers folder or hub id instead."
        )
    config = dict(ARCHITECTURES[arch])
    cls = unet_class(config, f"arch:{arch}")
    config.pop("_class_name", None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(**config).eval()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffPruneError(f"Expected {str(path)!r} but it does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffPruneError(
            f"{str(path)!r} is not valid JSON ({e}). The file is corrupt or was cut short: "
            "restore it from the original model or re-create the artifact."
        ) from None


def _scheduler_config(folder: Path) -> dict:
    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return dict(DEFAULT_SCHEDULER)


def builtin_path(src: str) -> Path:
    """The folder of a model shipped in the package (``builtin:NAME``)."""
    path = Path(__file__).parent / "assets" / src[len("builtin:"):]
    if not ((path / "pruning.json").is_file() or (path / "unet" / "pruning.json").is_file()):
        raise DiffPruneError(f"Unknown built-in model {src!r}; the package ships {', '.join(BUILTIN_MODELS)}.")
    return path


def load_source(src, device="cpu"):
    """Resolve ``src`` to ``(unet, scheduler_config, source_info)``.

    ``src`` may be ``arch:NAME`` (built-in architecture, random weights), a pruned diffprune folder
    (has ``pruning.json``), a diffusers model folder (``config.json`` + weights), a diffusers pipeline
    folder (``model_index.json``, as ``StableDiffusionPipeline.save_pretrained`` writes it: the UNet
    from ``unet/``, the noise schedule from ``scheduler/``), a hub id, or a ``UNet2DModel`` /
    ``UNet2DConditionModel`` instance.
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    if isinstance(src, (UNet2DModel, UNet2DConditionModel)):
        return src, dict(DEFAULT_SCHEDULER), {"source": f"in-memory {type(src).__name__}"}
    src = str(src)
    if src.startswith("builtin:"):
        src = str(builtin_path(src))
    if src.startswith("arch:"):
        arch = src[len("arch:"):]
        return build_unet(arch), dict(ARCH_SCHEDULERS.get(arch, DEFAULT_SCHEDULER)), {"source": src, "weights": "random (seed 0)"}
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise DiffPruneError(
                f"Model source {src!r} is a file; a model is a folder. Give a diffusers folder "
                "(config.json + diffusion_pytorch_model.safetensors), a pruned diffprune folder, "
                "a pipeline folder with a unet/ subfolder, a hub id, or arch:NAME."
            )
        if (path / "pruning.json").is_file():
            from .checkpoint import load

            model = load(path, device=device)
            return model, _scheduler_config(path), {"source": str(path.resolve()), "format": "diffprune"}
        if (path / "model_index.json").is_file():
            path = pipeline_component(path, "unet")
            if (path / "pruning.json").is_file():  # a pipeline whose UNet diffprune pruned
                from .checkpoint import load

                model = load(path, device=device)
                return model, _scheduler_config(path), {"source": str(path.resolve()), "format": "diffprune"}
        if not (path / "config.json").is_file():
            raise DiffPruneError(
                f"Folder {src!r} holds no config.json, model_index.json or pruning.json, so it is not "
                "a diffusers model, pipeline or pruned diffprune model. Point to the folder that holds "
                "config.json (for a pipeline, its unet/ subfolder)."
            )
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
        return model.to(device).eval(), _scheduler_config(path), {"source": str(path.resolve()), "format": "diffusers"}
    if src.count("/") == 1 and not src.startswith((".", "/")):
        return _load_hub(src, device)
    raise DiffPruneError(
        f"Model source {src!r} is neither an existing folder nor a hub id (owner/name) nor arch:NAME "
        f"(built-in: {', '.join(sorted(ARCHITECTURES))}). Check the path."
    )


def pipeline_component(folder, name: str) -> Path:
    """The ``name`` subfolder (unet, vae, scheduler, text_encoder, ...) of a diffusers pipeline folder,
    or a DiffPruneError saying it is missing and what the pipeline lists."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    part = folder / name
    if not part.is_dir():
        listed = sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)) if isinstance(index, dict) else []
        raise DiffPruneError(
            f"The pipeline folder {str(folder)!r} has no {name}/ subfolder "
            f"({'model_index.json lists ' + ', '.join(listed) if listed else 'model_index.json lists no components'}"
            f"{'; ' + name + ' is listed but its folder is missing' if name in listed else ''}). "
            f"A pipeline saved with save_pretrained has one folder per component: copy the whole pipeline, "
            f"or point to a folder that holds the {name}'s config.json."
        )
    return part


class FromSource:
    """A pipeline component of a model source, loaded when first needed (``load()``), since most
    runs need neither: ``component`` is "text_encoder" (diffprune.text.TextEncoder) or "vae"
    (AutoencoderKL, or an LDM pipeline's VQModel from vqvae/). ``arch:NAME`` gives the built-in pipeline's (random weights), a pipeline folder
    its subfolder (an error if missing), a bare or in-memory UNet none (None)."""

    COMPONENTS = ("text_encoder", "vae")

    def __init__(self, src, component: str, device="cpu"):
        if component not in self.COMPONENTS:
            raise ValueError(f"component {component!r}; allowed: {', '.join(self.COMPONENTS)}")
        if isinstance(src, str) and src.startswith("builtin:"):
            src = str(builtin_path(src))
        self.src, self.component, self.device = src, component, device

    def _pipeline(self):
        path = Path(self.src)
        if path.is_dir() and not (path / "model_index.json").is_file() and (path.parent / "model_index.json").is_file():
            path = path.parent  # the unet/ subfolder of a pipeline (e.g. a pruned one)
        return path if (path / "model_index.json").is_file() else None

    def available(self) -> bool:
        """Whether the source has this component (without loading it)."""
        if not isinstance(self.src, str):
            return False
        if self.src.startswith("arch:"):
            from .latents import VAE_SETUPS
            from .text import TEXT_SETUPS

            return self.src[len("arch:"):] in (TEXT_SETUPS if self.component == "text_encoder" else VAE_SETUPS)
        pipeline = self._pipeline()
        return pipeline is not None and any((pipeline / name).is_dir() for name in self._folders())

    def _folders(self) -> tuple:
        # An LDMPipeline's autoencoder is a VQModel in vqvae/; Stable Diffusion's an AutoencoderKL in vae/.
        return ("vae", "vqvae") if self.component == "vae" else (self.component,)

    def load(self):
        src = self.src if isinstance(self.src, str) else None
        if src is None:
            return None
        if src.startswith("arch:"):
            arch = src[len("arch:"):]
            if self.component == "text_encoder":
                from .text import build_text_encoder

                built = build_text_encoder(arch)
                if built is not None:
                    for _, model in built.parts:
                        model.to(self.device)
                return built
            from .latents import VAE_SETUPS, build_vae

            return build_vae(VAE_SETUPS[arch]).to(self.device) if arch in VAE_SETUPS else None
        path = self._pipeline()
        if path is None:
            return None
        if self.component == "text_encoder":
            from .text import load_text_encoder

            encoder = load_text_encoder(path)
            for _, model in encoder.parts:
                model.to(self.device)
            return encoder
        from .latents import load_vae, load_vq

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


def check_unet_config(config: dict, where) -> None:
    """Refuse a config diffprune cannot prune or feed, before any weights are read."""
    from .conditioning import conditioning

    unet_class(config, where)
    conditioning(config)


def require_unconditional(model, what: str) -> None:
    """For the stages that feed only (sample, timestep) so far: a clear error for a conditional UNet."""
    from .conditioning import conditioning

    cond = conditioning(model)
    if cond.kind != "none":
        raise DiffPruneError(
            f"{what} takes unconditional UNet2DModels so far; this {cond.model_class} is conditioned on "
            f"{cond.kind}. Prune, save and load handle it already; {what} for conditional models is not implemented yet. "
            "Use an unconditional UNet2DModel here, or stop after `diffprune prune`."
        )


def sample_size(model) -> tuple:
    """(H, W) of the model's default input (latents for latent models)."""
    size = model.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def example_inputs(model, batch: int = 1, device="cpu"):
    """Inputs for tracing and MAC counting: ``sample`` (B, C, H, W), ``timestep`` (B,) and the
    model's conditioning at its default shapes (diffprune.conditioning: class 0, empty-prompt
    text embeddings of 77 tokens, SDXL's added text/time inputs)."""
    import torch

    from .conditioning import conditioning

    h, w = sample_size(model)
    return {
        "sample": torch.randn(batch, model.config.in_channels, h, w, device=device),
        "timestep": torch.full((batch,), 10, dtype=torch.long, device=device),
        **conditioning(model).inputs(batch, (h, w), device=device),
    }


def count_macs_params(model) -> tuple:
    """(MACs, params) of one forward at batch 1, counted by torch-pruning."""
    import torch
    import torch_pruning as tp

    device = next(model.parameters()).device
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # tp prints a batch-size note
        macs, params = tp.utils.count_ops_and_params(model, example_inputs(model, device=device))
    return int(macs), int(params)


def versions() -> dict:
    import diffusers
    import safetensors
    import torch
    import torch_pruning

    from . import __version__

    return {
        "diffprune": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
        "diffusers": diffusers.__version__, "safetensors": safetensors.__version__,
    }
