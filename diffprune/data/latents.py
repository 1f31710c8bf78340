"""Calibration and fine-tuning images of latent models: which models denoise latents, the VAE that encodes
their images (a clear error when there is none), and the images at the size that encodes to the UNet's."""

from ..errors import DiffPruneError
from ..sources.vae import vae_factor


def load_latent_images(data, model, cond, vae, limit: int, seed: int, resize: str, alternative: str = ""):
    """``(vae, found)``: a latent model's VAE (a ``FromSource`` loaded; a clear error when there is none) and
    ``limit`` images of ``data`` (diffprune.data.images.load_calibration) at the size the VAE encodes to the UNet's
    latent size. ``alternative`` names what else the caller accepts instead of a VAE."""
    from .images import load_calibration

    vae = require_vae(data, cond, vae, alternative)
    found = load_calibration(data, pixel_size(model, vae), vae.config.in_channels, limit=limit, seed=seed,
                             resize=resize)
    return vae, found


def require_vae(data, cond, vae, alternative: str = ""):
    """The VAE (a ``FromSource`` loaded), or a clear error when a latent model has none."""
    from .images import describe
    from ..sources.loader import FromSource

    if isinstance(vae, FromSource):
        vae = vae.load()
    if vae is None:
        raise DiffPruneError(
            f"Data {describe(data)!r}: this {cond.model_class} denoises latents of its pipeline's VAE, and no VAE was "
            "given to encode the images. Give the pipeline folder (with vae/) as SRC or --pipeline, or vae= in Python "
            f"(diffprune.sources.vae.build_vae / load_vae){alternative}.")
    return vae


def pixel_size(model, vae) -> tuple:
    """(H, W) of the images whose latents have ``model``'s sample size."""
    from ..sources.unet import sample_size

    f = vae_factor(vae)
    size = sample_size(model)
    return size[0] * f, size[1] * f


def is_latent(model, cond, vae) -> bool:
    """Whether ``model`` denoises latents (its images go through ``vae``) rather than pixels.

    A VAE given (or one its pipeline has) says latent. Without one, a text-conditioned UNet of 1 or 3
    channels is taken as a pixel model (the digits-text model); any other width (Stable Diffusion's 4) is
    latent, and the caller's missing-VAE error follows."""
    from ..sources.loader import FromSource

    if vae is not None and (not isinstance(vae, FromSource) or vae.available()):
        return True
    return cond.text_width is not None and model.config.in_channels not in (1, 3)
