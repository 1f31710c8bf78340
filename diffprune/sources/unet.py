"""UNets: the diffusers class a config names, built-in architectures built with seeded weights, the
example inputs that trace them, and their MACs and parameters."""

import contextlib
import io

from ..errors import DiffPruneError
from .architectures import ARCHITECTURES


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


def check_arch(arch: str) -> None:
    """A clear error for an ``arch:NAME`` that is not built in."""
    if arch not in ARCHITECTURES:
        raise DiffPruneError(
            f"Unknown built-in architecture {arch!r}. Known: {', '.join(sorted(ARCHITECTURES))}. "
            "Use arch:NAME with one of these, or give a diffusers folder or hub id instead."
        )


def build_unet(arch: str, seed: int = 0):
    """Build a built-in architecture with seeded random weights."""
    import torch

    check_arch(arch)
    config = dict(ARCHITECTURES[arch])
    cls = unet_class(config, f"arch:{arch}")
    config.pop("_class_name", None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(**config).eval()


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


def example_inputs(model, batch: int = 1, device="cpu", text_tokens: int | None = None):
    """Inputs for tracing and MAC counting: ``sample`` (B, C, H, W), ``timestep`` (B,) and the
    model's conditioning at its default shapes (diffprune.sources.conditioning: class 0, empty-prompt
    text embeddings of ``text_tokens`` tokens (default CLIP's 77; a pipeline's tokenizer may pad to fewer),
    SDXL's added text/time inputs)."""
    import torch

    from .conditioning import conditioning

    h, w = sample_size(model)
    cond = conditioning(model)
    if text_tokens is not None and cond.text_width:
        import dataclasses

        cond = dataclasses.replace(cond, text_tokens=int(text_tokens))
    return {
        "sample": torch.randn(batch, model.config.in_channels, h, w, device=device),
        "timestep": torch.full((batch,), 10, dtype=torch.long, device=device),
        **cond.inputs(batch, (h, w), device=device),
    }


def count_macs_params(model, text_tokens: int | None = None) -> tuple:
    """(MACs, params) of one forward at batch 1, counted by torch-pruning; a text-conditioned UNet reads
    ``text_tokens`` tokens (its pipeline tokenizer's length; default 77): cross-attention's cost grows with it."""
    import torch
    import torch_pruning as tp

    device = next(model.parameters()).device
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # tp prints a batch-size note
        macs, params = tp.utils.count_ops_and_params(model, example_inputs(model, device=device, text_tokens=text_tokens))
    return int(macs), int(params)


def versions() -> dict:
    import diffusers
    import safetensors
    import torch
    import torch_pruning

    from .. import __version__

    return {
        "diffprune": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
        "diffusers": diffusers.__version__, "safetensors": safetensors.__version__,
    }
