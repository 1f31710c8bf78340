"""Structural pruning of a pipeline's image decoder: the decoder of an AutoencoderKL (Stable Diffusion's VAE) or
of a VQModel (latent diffusion's VQ autoencoder). The public function is ``prune_decoder``.

At few sampling steps the decoder is a large share of a pipeline's time (SD-1.5 at 512x512: 1.24 TMACs, more
than one UNet step), so it is pruned with the UNet's machinery (diffprune.pruning.pruner._Planner): torch-pruning's
dependency graph finds the coupled channels, whose couplings here are the decoder's residual adds, its GroupNorm
groups (kept equal), and the mid-block self-attention (query, key and value shrink together; its GroupNorm too).
Two widths are fixed: ``post_quant_conv`` (and a VQModel's codebook) read the latent channels the UNet writes, and
``conv_out`` writes the image's channels. The encoder is not touched (the runtime never runs it).

Importance. The gradient criteria (diff-pruning, taylor) score a channel by first-order Taylor importance
|w * dL/dw| (Molchanov et al. 2019), as for the UNet, where L is a reconstruction loss *against the dense
decoder*: the mean squared error between the decoder's image of a perturbed calibration latent z + s * std(z) * e
and the dense decoder's image of z, summed over the noise levels s in ``NOISE_LEVELS``. Without the perturbation
the dense decoder is its own target and every gradient is zero; with it, the gradient measures how much each
weight carries of the decoder's response around the data. (Diff-Pruning's timestep threshold has no counterpart
here: a decoder has no timesteps.) magnitude and random need no data; reinit redraws the pruned decoder's weights.
The calibration latents are the encoder's posterior means of the calibration images (``decoder_latents``), or
latents the pipeline's UNet draws itself (``generate:N``).
"""

import copy
import time
from dataclasses import asdict, dataclass, field

from ..errors import DiffPruneError
from .importance import CRITERIA, DEFAULT_METHOD

NOISE_LEVELS = (0.05, 0.1, 0.2)  # perturbations of the latents, in units of their standard deviation
COMPONENT_FOLDERS = {"AutoencoderKL": "vae", "VQModel": "vqvae"}  # the pipeline subfolder each is saved in


@dataclass
class DecoderPruneReport:
    component: str  # vae_decoder or vq_decoder, the pipeline component it exports as
    method: str
    ratio: float
    target_macs: float | None
    round_to: int
    seed: int
    params_before: int  # the decoder path: post_quant_conv (+ quantizer) + decoder
    params_after: int
    macs_before: int  # one decode at batch 1 of the pipeline's latent size
    macs_after: int
    latent_shape: list  # (C, h, w) the MACs are counted at
    layer_widths: dict = field(default_factory=dict)  # conv/linear name -> [dense out width, pruned out width]
    noise_levels: list = field(default_factory=list)
    losses: list = field(default_factory=list)  # the reconstruction loss at each noise level
    calibration: str = ""
    no_gradient_groups: list = field(default_factory=list)
    seconds: float = 0.0
    importance_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        def row(label, before, after, unit):
            return f"| {label:<6} | {before / unit:>9.3f} | {after / unit:>9.3f} | {after / max(before, 1):>6.1%} |"

        lines = [
            f"{self.component}: |  dense |    pruned |   kept |",
            "|--------|-----------|-----------|--------|",
            row("params", self.params_before, self.params_after, 1e6) + "  (M)",
            row("MACs", self.macs_before, self.macs_after, 1e9) + f"  (G, latents {'x'.join(map(str, self.latent_shape))})",
            f"method {self.method}, ratio {self.ratio:.3f}, round_to {self.round_to}, {self.seconds:.1f} s",
        ]
        if self.losses:
            lines.append(f"importance from {self.calibration}: reconstruction loss vs the dense decoder at noise levels "
                         f"{', '.join(f'{s:g}' for s in self.noise_levels)}")
        return "\n".join(lines)


def _wrapper(autoencoder):
    """The decode path as one module (latent_sample -> image), the graph torch-pruning traces."""
    import torch

    class DecodePath(torch.nn.Module):
        def __init__(self, autoencoder):
            super().__init__()
            self.autoencoder = autoencoder

        def forward(self, latent_sample):  # (B, C, h, w) -> (B, 3, H, W)
            return self.autoencoder.decode(latent_sample).sample

    return DecodePath(autoencoder)


def latent_size(autoencoder, latent_hw=None) -> tuple:
    """(h, w) of the latents the decoder is traced and counted at: ``latent_hw`` (the pipeline UNet's sample
    size), else the autoencoder's own sample_size divided by its factor."""
    from ..sources.vae import vae_factor

    if latent_hw is not None:
        return (latent_hw, latent_hw) if isinstance(latent_hw, int) else tuple(latent_hw)
    size = autoencoder.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    f = vae_factor(autoencoder)
    return size[0] // f, size[1] // f


def _decode_modules(autoencoder) -> list:
    """The modules of the decode path (what pruning may change and what its cost counts)."""
    parts = [autoencoder.post_quant_conv, autoencoder.decoder]
    if getattr(autoencoder, "quantize", None) is not None:
        parts.append(autoencoder.quantize)
    return [p for p in parts if p is not None]


def count_decoder(autoencoder, latent_hw=None) -> tuple:
    """(MACs, params) of one decode at batch 1 (latents of ``latent_size``), counted by torch-pruning."""
    import contextlib
    import io

    import torch
    import torch_pruning as tp

    device = next(autoencoder.parameters()).device
    h, w = latent_size(autoencoder, latent_hw)
    inputs = torch.zeros(1, autoencoder.config.latent_channels, h, w, device=device)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        macs, _ = tp.utils.count_ops_and_params(_wrapper(autoencoder), inputs)
    params = sum(p.numel() for m in _decode_modules(autoencoder) for p in m.parameters())
    return int(macs), int(params)


def decoder_latents(autoencoder, data, n: int = 64, seed: int = 0, resize: str = "bilinear", micro_batch: int = 16):
    """Calibration latents of a decoder: ``n`` images of ``data`` (builtin:digits, a folder, a .npy/.npz) at the
    autoencoder's image size, encoded to their posterior means (a VQModel: its encoder output), in the scale
    ``decode`` takes (not multiplied by the scaling factor). Returns (latents (N, C, h, w), description)."""
    from ..data.images import describe, load_images
    from ..sources.vae import encode

    size = autoencoder.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = load_images(data, size, autoencoder.config.in_channels, limit=n, seed=seed, resize=resize)
    shift = getattr(autoencoder.config, "shift_factor", None) or 0.0
    latents = encode(autoencoder, images, micro_batch) / float(autoencoder.config.scaling_factor or 1.0) + shift
    return latents, f"{describe(data)} encoded by the {type(autoencoder).__name__}"


def generated_latents(unet, scheduler_config, autoencoder, count: int, seed: int = 0, progress: bool = True,
                      text_encoder=None):
    """``generate:N`` for a decoder: N latents drawn by the pipeline's ``unet`` (DDIM, the empty prompt for
    text-to-image ones), in the scale ``decode`` takes. Returns (latents, description)."""
    from .calibration import generate_samples

    samples, _, _ = generate_samples(unet, scheduler_config, count, seed, progress, text_encoder=text_encoder,
                                     latent=True)
    shift = getattr(autoencoder.config, "shift_factor", None) or 0.0
    return samples / float(autoencoder.config.scaling_factor or 1.0) + shift, f"generate:{count} (latents of the UNet)"


def _accumulate(model, dense, latents, micro_batch: int, seed: int, noise_levels) -> list:
    """Sum the gradients of the reconstruction loss against ``dense`` into ``model``'s ``.grad`` (module doc)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    latents = latents.to(device)
    n = latents.shape[0]
    std = latents.std().clamp_min(1e-6)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        targets = torch.cat([dense(latents[i:i + micro_batch]) for i in range(0, n, micro_batch)])  # (N, 3, H, W)
    model.zero_grad(set_to_none=True)
    losses = []
    for level in noise_levels:
        total = 0.0
        for start in range(0, n, micro_batch):
            z = latents[start:start + micro_batch] + level * std * noise[start:start + micro_batch]
            loss = F.mse_loss(model(z).float(), targets[start:start + micro_batch]) * (z.shape[0] / n)
            loss.backward()
            total += loss.item()
        losses.append(total)
    return losses


def check_decoder_options(method, ratio=None, target_macs=None, round_to=8, latents=None):
    """Raise DiffPruneError for out-of-range options (cheap: before any model is loaded)."""
    from .pruner import check_options

    check_options(method, ratio, target_macs, round_to=round_to, data="latents" if latents is not None else None)


def prune_decoder(autoencoder, method: str = DEFAULT_METHOD, ratio: float | None = None,
                  target_macs: float | None = None, latents=None, round_to: int = 8, seed: int = 0,
                  micro_batch: int = 16, latent_hw=None, noise_levels=NOISE_LEVELS, calibration: str = ""):
    """Prune the decoder of ``autoencoder`` (AutoencoderKL or VQModel); return ``(pruned, DecoderPruneReport)``.

    ``ratio`` (fraction of channels removed per layer) or ``target_macs`` (fraction of the decoder's dense MACs
    to keep; default 0.5, the ratio is searched). The gradient criteria need ``latents`` (N, C, h, w), in the
    scale ``decode`` takes (``decoder_latents`` / ``generated_latents`` make them; ``calibration`` describes them
    for the report). Widths stay multiples of ``round_to``, GroupNorm groups equal. ``latent_hw``: the latent
    size the MACs are counted at (the pipeline UNet's sample size). The input autoencoder is not modified; the
    returned one has the same encoder.
    """
    import torch

    from .pruner import DEFAULT_TARGET_MACS, _out_width, _Planner, _search_ratio

    if type(autoencoder).__name__ not in COMPONENT_FOLDERS:
        raise DiffPruneError(f"prune_decoder takes an AutoencoderKL or a VQModel; got a {type(autoencoder).__name__}.")
    if getattr(autoencoder.config, "norm_type", "group") == "spatial":
        raise DiffPruneError("This VQModel's decoder uses spatial normalisation (norm_type 'spatial', MoVQ), whose "
                             "norms read the latents; its pruning is not implemented. Prune the UNet alone.")
    check_decoder_options(method, ratio, target_macs, round_to, latents)
    if ratio is None and target_macs is None:
        target_macs = DEFAULT_TARGET_MACS
    started = time.perf_counter()
    component = "vae_decoder" if type(autoencoder).__name__ == "AutoencoderKL" else "vq_decoder"
    h, w = latent_size(autoencoder, latent_hw)
    device = next(autoencoder.parameters()).device
    channels = autoencoder.config.latent_channels

    def inputs(model):
        return {"latent_sample": torch.randn(1, channels, h, w, device=next(model.parameters()).device)}

    def ignored(model):
        # Fixed widths: the latent channels post_quant_conv (and a VQ codebook) reads, the image's channels.
        a = model.autoencoder
        return [a.decoder.conv_out, a.post_quant_conv] + ([a.quantize] if getattr(a, "quantize", None) else [])

    def macs(model):
        return count_decoder(model.autoencoder, (h, w))[0]

    dense = _wrapper(copy.deepcopy(autoencoder).float().eval().requires_grad_(True))
    macs0, params0 = count_decoder(dense.autoencoder, (h, w))
    criterion = CRITERIA[method](thr=0.0)
    losses = []
    importance_started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if criterion.needs_data:
            frozen = _wrapper(copy.deepcopy(autoencoder).float().eval().requires_grad_(False))
            with torch.enable_grad():
                losses = _accumulate(dense, frozen, latents.float(), micro_batch, seed, noise_levels)
        planner = _Planner(dense, criterion, round_to, prune_heads=False, inputs=inputs, ignored=ignored(dense))
    importance_seconds = time.perf_counter() - importance_started
    if ratio is None:
        ratio, model, _ = _search_ratio(planner, target_macs * macs0, count=macs)
    else:
        model = planner.apply(ratio)
    if getattr(criterion, "reinitialise", False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for part in _decode_modules(model.autoencoder):
                for m in part.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
    pruned = model.autoencoder.eval().requires_grad_(False).to(device)
    for p in pruned.parameters():
        p.grad = None
    macs1, params1 = count_decoder(pruned, (h, w))
    dense_widths = {n: _out_width(m) for n, m in autoencoder.named_modules() if _out_width(m) is not None}
    layer_widths = {n: [dense_widths[n], _out_width(m)] for n, m in pruned.named_modules()
                    if n in dense_widths and dense_widths[n] != _out_width(m)}
    report = DecoderPruneReport(
        component=component, method=method, ratio=round(float(ratio), 6), target_macs=target_macs, round_to=round_to,
        seed=seed, params_before=params0, params_after=params1, macs_before=macs0, macs_after=macs1,
        latent_shape=[channels, h, w], layer_widths=layer_widths,
        noise_levels=list(noise_levels) if losses else [], losses=[round(x, 8) for x in losses],
        calibration=calibration if criterion.needs_data else "", no_gradient_groups=list(planner.no_signal),
        seconds=time.perf_counter() - started, importance_seconds=importance_seconds)
    return pruned, report
