"""The VAE of latent UNets: calibration images -> latents, as the pipelines train on them.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022), Sec. 3:
the UNet denoises z = scaling_factor * E(x), the encoder's latent scaled to about unit variance
(SD 1.x/2.x: 0.18215, SDXL: 0.13025). For calibration this takes the posterior mean of E(x), not a
sample: the gradients should measure the data, and SD's posterior standard deviation is tiny.

Built-in VAEs (``VAES``) are ``diffusers.AutoencoderKL`` configs with seeded random weights: SD's at
real size (83.7M parameters; block widths 128-512, factor 8) and a tiny one for tests (factor 2).
A pipeline folder's ``vae/`` is used when present; a pipeline without one is an error when images
must be encoded.
"""

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


def load_vae(folder):
    """A pipeline folder's vae/ (a clear error when it has none)."""
    from diffusers import AutoencoderKL

    from .folders import pipeline_component

    path = pipeline_component(folder, "vae")
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
