"""The VAE of latent UNets: calibration images -> latents, as the pipelines train on them.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022), Sec. 3:
the UNet denoises z = scaling_factor * E(x), the encoder's latent scaled to about unit variance
(SD 1.x/2.x: 0.18215, SDXL: 0.13025). For calibration this takes the posterior mean of E(x), not a
sample: the gradients should measure the data, and SD's posterior standard deviation is tiny.

Built-in VAEs (``VAES``) are ``diffusers.AutoencoderKL`` configs with seeded random weights: SD's at
real size (83.7M parameters; block widths 128-512, factor 8) and a tiny one for tests (factor 2).
A pipeline folder's ``vae/`` is used when present; a pipeline without one is an error when images
must be encoded.

A pipeline's autoencoder whose decoder is pruned (diffprune.pruning.decoder) is stored as a pruned UNet is
(sources/checkpoint.py): the dense diffusers config.json, the weights, and pruning.json (format
``diffprune.pruned-decoder/1``) with every layer's width and what made it. ``load_vae``/``load_vq`` rebuild it;
only diffprune reads such a folder.
"""

import json
from pathlib import Path

from ..errors import DiffPruneError
from .architectures import VAES, VQS


def build_vae(name: str, seed: int = 0):
    """A built-in AutoencoderKL with seeded random weights, frozen."""
    import torch
    from diffusers import AutoencoderKL

    if name not in VAES:
        raise DiffPruneError(f"Unknown built-in VAE {name!r}. Known: {', '.join(sorted(VAES))}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**VAES[name]).eval().requires_grad_(False)


WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_autoencoder(autoencoder, folder, info: dict) -> Path:
    """Write an autoencoder whose decoder is pruned into ``folder`` (created; the caller makes it atomic):
    config.json (dense), the weights, and pruning.json with the widths and ``info`` (what made it)."""
    from safetensors.torch import save_file

    from ..runtime.formats import PRUNED_DECODER_FORMAT, PRUNING_JSON
    from .structure import widths
    from .unet import versions

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    record = {"format": PRUNED_DECODER_FORMAT, "model_class": type(autoencoder).__name__, **info,
              "params": sum(v.numel() for v in state.values()), "versions": versions(), "widths": widths(autoencoder)}
    autoencoder.save_config(folder)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "producer": "diffprune"})
    (folder / PRUNING_JSON).write_text(json.dumps(record, indent=1, default=str))
    return folder


def is_pruned(folder) -> bool:
    """Whether an autoencoder folder (a pipeline's vae/ or vqvae/) holds a pruned decoder (its pruning.json)."""
    from ..runtime.formats import PRUNING_JSON

    return (Path(folder) / PRUNING_JSON).is_file()


def read_decoder_pruning(folder) -> dict | None:
    """pruning.json of an autoencoder folder whose decoder is pruned (checked), else None."""
    from ..runtime.formats import PRUNED_DECODER_FORMAT, read_pruning_json

    return read_pruning_json(folder, format=PRUNED_DECODER_FORMAT) if is_pruned(folder) else None


def load_pruned_autoencoder(folder):
    """Rebuild an AutoencoderKL or VQModel whose decoder is pruned from ``folder``: the dense architecture
    from config.json, resized to pruning.json's widths, its weights checked and loaded; frozen."""
    import diffusers

    from .folders import _read_json
    from .structure import apply_widths, load_checked_weights

    folder = Path(folder)
    info = read_decoder_pruning(folder)
    config = _read_json(folder / "config.json")
    name = info.get("model_class", config.get("_class_name"))
    if name not in ("AutoencoderKL", "VQModel") or config.get("_class_name", name) != name:
        raise DiffPruneError(f"{str(folder)!r}: pruning.json records a {name!r} and config.json a "
                             f"{config.get('_class_name')!r}; a pruned decoder belongs to an AutoencoderKL or a VQModel. "
                             "Restore the folder as `diffprune prune --components decoder` wrote it.")
    cls = getattr(diffusers, name)
    try:
        model = cls.from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise DiffPruneError(f"config.json in {str(folder)!r} does not build a {name}: {e}.") from None
    apply_widths(model, info["widths"])
    model.load_state_dict(load_checked_weights(model, folder / WEIGHTS), strict=True)
    return model.eval().requires_grad_(False)


def load_vae(folder):
    """A pipeline folder's vae/ (a clear error when it has none); a pruned decoder is rebuilt."""
    from diffusers import AutoencoderKL

    from .folders import pipeline_component

    path = pipeline_component(folder, "vae")
    if is_pruned(path):
        return load_pruned_autoencoder(path)
    try:
        return AutoencoderKL.from_pretrained(str(path)).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffPruneError(f"Could not load the VAE in {str(path)!r}: {e}. Check that its weights file is "
                             "complete and matches config.json.") from None


def build_vq(name: str, seed: int = 0):
    """A built-in VQModel with seeded random weights, frozen."""
    import torch
    from diffusers import VQModel

    if name not in VQS:
        raise DiffPruneError(f"Unknown built-in VQ autoencoder {name!r}. Known: {', '.join(sorted(VQS))}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQModel(**VQS[name]).eval().requires_grad_(False)


def load_vq(folder):
    """A latent-diffusion pipeline folder's vqvae/ (diffusers' LDMPipeline; a clear error when it has none).
    Its decoder quantises to the nearest codebook entry before decoding, as LDMPipeline's ``vqvae.decode``."""
    from diffusers import VQModel

    from .folders import pipeline_component

    path = pipeline_component(folder, "vqvae")
    if is_pruned(path):
        return load_pruned_autoencoder(path)
    try:
        return VQModel.from_pretrained(str(path)).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffPruneError(f"Could not load the VQ autoencoder in {str(path)!r}: {e}. Check that its weights "
                             "file is complete and matches config.json.") from None


def vae_factor(vae) -> int:
    """Pixels per latent along each side: 2 ** (number of resolutions - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae, images, micro_batch: int = 16):
    """Images (N, 3, H, W) in [-1, 1] -> latents (N, C, H / f, W / f) times the VAE's scaling factor.

    An AutoencoderKL gives its posterior mean; a VQModel (LDM) its encoder output before quantisation, what
    latent diffusion trains on (Rombach et al. 2022, Sec. 3: the quantisation is part of the decoder)."""
    import torch

    device = next(vae.parameters()).device
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], micro_batch):
            x = images[start:start + micro_batch].to(device)
            encoded = vae.encode(x)
            z = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents  # (b, C, h, w)
            out.append(((z - shift) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)
