"""Where UNets come from: built-in architectures, diffusers folders, hub ids and pruned folders.

Built-in architectures (``arch:NAME``) are built from config with seeded random weights: the
CIFAR-10 DDPM one is the paper's model, the tiny ones keep the test suite fast (as timm registers
tiny test models).
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
}

# The denoising schedule of the paper's DDPM models; used when a source carries no scheduler config.
DEFAULT_SCHEDULER = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
    "clip_sample": True, "variance_type": "fixed_large",
}


def build_unet(arch: str, seed: int = 0):
    """Build a built-in architecture with seeded random weights."""
    import torch
    from diffusers import UNet2DModel

    if arch not in ARCHITECTURES:
        raise DiffPruneError(
            f"Unknown built-in architecture {arch!r}. Known: {', '.join(sorted(ARCHITECTURES))}. "
            "Use arch:NAME with one of these, or give a diffusers folder or hub id instead."
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DModel(**ARCHITECTURES[arch]).eval()


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


def load_source(src, device="cpu"):
    """Resolve ``src`` to ``(unet, scheduler_config, source_info)``.

    ``src`` may be ``arch:NAME`` (built-in architecture, random weights), a pruned diffprune folder
    (has ``pruning.json``), a diffusers model folder (``config.json`` + weights), a diffusers pipeline
    folder (``model_index.json`` with a ``unet`` subfolder), a hub id, or a ``UNet2DModel`` instance.
    """
    from diffusers import UNet2DModel

    if isinstance(src, UNet2DModel):
        return src, dict(DEFAULT_SCHEDULER), {"source": "in-memory UNet2DModel"}
    src = str(src)
    if src.startswith("builtin:"):
        name = src[len("builtin:"):]
        path = Path(__file__).parent / "assets" / name
        if not (path / "pruning.json").is_file():
            raise DiffPruneError(f"Unknown built-in model {src!r}; the package ships builtin:digits-ddpm.")
        src = str(path)
    if src.startswith("arch:"):
        arch = src[len("arch:"):]
        return build_unet(arch), dict(DEFAULT_SCHEDULER), {"source": src, "weights": "random (seed 0)"}
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
        if (path / "model_index.json").is_file() and (path / "unet").is_dir():
            path = path / "unet"
        if not (path / "config.json").is_file():
            raise DiffPruneError(
                f"Folder {src!r} holds no config.json, model_index.json or pruning.json, so it is not "
                "a diffusers model, pipeline or pruned diffprune model. Point to the folder that holds "
                "config.json (for a pipeline, its unet/ subfolder)."
            )
        config = _read_json(path / "config.json")
        check_unet_config(config, path / "config.json")
        try:
            model = UNet2DModel.from_pretrained(str(path))
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
    from diffusers import DDPMScheduler, UNet2DModel

    check_hub_id(repo_id)
    errors = []
    for subfolder in (None, "unet"):
        try:
            model = UNet2DModel.from_pretrained(repo_id, subfolder=subfolder)
        except Exception as e:  # hub/network errors come in many types; we report them together
            errors.append(f"{subfolder or '.'}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        try:
            scheduler = dict(DDPMScheduler.load_config(repo_id, subfolder="scheduler" if subfolder else None))
        except Exception:
            scheduler = dict(DEFAULT_SCHEDULER)
        return model.to(device).eval(), scheduler, {"source": repo_id, "format": "hub"}
    raise DiffPruneError(
        f"Could not load a UNet2DModel from the hub id {repo_id!r} ({'; '.join(errors)}). Without network "
        "access, download the model elsewhere and pass its local folder instead."
    )


def check_unet_config(config: dict, where) -> None:
    cls = config.get("_class_name")
    if cls != "UNet2DModel":
        raise DiffPruneError(
            f"{str(where)!r} describes a {cls!r}, but diffprune prunes UNet2DModel (unconditional pixel "
            "UNets such as google/ddpm-cifar10-32). Point to a UNet2DModel folder."
        )


def example_inputs(model, batch: int = 1, device="cpu"):
    """Inputs for tracing and MAC counting: ``sample`` (B, C, H, W) and ``timestep`` (B,)."""
    import torch

    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "sample": torch.randn(batch, cfg.in_channels, h, w, device=device),
        "timestep": torch.full((batch,), 10, dtype=torch.long, device=device),
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
