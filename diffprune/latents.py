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

from .errors import DiffPruneError

_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu",
)
VAES = {
    "sd": dict(_SD_VAE, sample_size=512, scaling_factor=0.18215),  # runwayml/stable-diffusion-v1-5 vae/
    "sdxl": dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025),  # stable-diffusion-xl-base-1.0 vae/
    # 2 resolutions: factor 2, so tiny-sd's 16x16 latents are 32x32 images.
    "tiny": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 norm_num_groups=8, sample_size=32, scaling_factor=0.18215),
}
VAE_SETUPS = {"sd15": "sd", "sd21-base": "sd", "sdxl": "sdxl", "tiny-sd": "tiny", "tiny-sdxl": "tiny"}


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

    from .models import pipeline_component

    path = pipeline_component(folder, "vae")
    try:
        return AutoencoderKL.from_pretrained(str(path)).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffPruneError(f"Could not load the VAE in {str(path)!r}: {e}. Check that its weights file is "
                             "complete and matches config.json.") from None


# VQ autoencoders of latent DDPMs (diffusers' LDMPipeline: vqvae/). The tiny one is for tests: factor 2,
# 3 latent channels (as CompVis/ldm-celebahq-256's VQ-f4 has), a codebook of 16.
VQS = {
    "tiny": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=8, sample_size=32),
}


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

    from .models import pipeline_component

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


def load_latent_images(data, model, cond, vae, limit: int, seed: int, resize: str, alternative: str = ""):
    """``(vae, found)``: a latent model's VAE (a ``FromSource`` loaded; a clear error when there is none) and
    ``limit`` images of ``data`` (diffprune.data.load_calibration) at the size the VAE encodes to the UNet's
    latent size. ``alternative`` names what else the caller accepts instead of a VAE."""
    from .data import load_calibration

    vae = require_vae(data, cond, vae, alternative)
    found = load_calibration(data, pixel_size(model, vae), vae.config.in_channels, limit=limit, seed=seed,
                             resize=resize)
    return vae, found


def require_vae(data, cond, vae, alternative: str = ""):
    """The VAE (a ``FromSource`` loaded), or a clear error when a latent model has none."""
    from .data import describe
    from .models import FromSource

    if isinstance(vae, FromSource):
        vae = vae.load()
    if vae is None:
        raise DiffPruneError(
            f"Data {describe(data)!r}: this {cond.model_class} denoises latents of its pipeline's VAE, and no VAE was "
            "given to encode the images. Give the pipeline folder (with vae/) as SRC or --pipeline, or vae= in Python "
            f"(diffprune.latents.build_vae / load_vae){alternative}.")
    return vae


def pixel_size(model, vae) -> tuple:
    """(H, W) of the images whose latents have ``model``'s sample size."""
    from .models import sample_size

    f = vae_factor(vae)
    size = sample_size(model)
    return size[0] * f, size[1] * f



def is_latent(model, cond, vae) -> bool:
    """Whether ``model`` denoises latents (its images go through ``vae``) rather than pixels.

    A VAE given (or one its pipeline has) says latent. Without one, a text-conditioned UNet of 1 or 3
    channels is taken as a pixel model (the digits-text model); any other width (Stable Diffusion's 4) is
    latent, and the caller's missing-VAE error follows."""
    from .models import FromSource

    if vae is not None and (not isinstance(vae, FromSource) or vae.available()):
        return True
    return cond.text_width is not None and model.config.in_channels not in (1, 3)
