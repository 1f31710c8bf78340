"""Draw images from a torch UNet (for generate:N calibration data and quality checks).

Deployment sampling lives in diffprune.runtime (numpy + ONNX Runtime/TensorRT); this one is for
the torch side of the pipeline only.
"""


def generate(model, scheduler_config: dict, n: int, seed: int = 0, steps: int = 50, batch: int = 32,
             progress: bool = True, noise=None, inputs=None, uncond=None, guidance_scale: float = 1.0,
             clamp: bool = True):
    """``n`` samples as a float tensor (N, C, H, W), DDIM (eta 0) with ``steps`` steps; in [-1, 1]
    with ``clamp`` (pixel models), as drawn without it (latents, which are not bounded).

    ``noise`` (N, C, H, W) fixes the starting noise, so two models can be compared from the same noise.
    ``inputs`` is the conditioning per sample (diffprune.sources.conditioning, batch-first tensors); without
    it a conditional model gets its default (class 0, empty-prompt text). With ``uncond`` (the same
    for the empty prompt) and ``guidance_scale`` > 1, classifier-free guidance (Ho & Salimans 2022,
    Eq. 6): eps = eps_uncond + scale * (eps_cond - eps_uncond).
    """
    import torch
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    from .._io import quiet
    from ..sources.conditioning import concat_inputs, conditioning, inputs_to, slice_inputs

    device = next(model.parameters()).device
    cfg = model.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    allowed = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = DDIMScheduler.from_config(allowed)
    scheduler.set_timesteps(steps)
    if noise is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((n, cfg.in_channels, *size), generator=generator)
    if inputs is None:
        inputs = conditioning(model).inputs(n, size)
    out = []
    bar = tqdm(total=steps * ((n + batch - 1) // batch), desc="sampling", disable=quiet(progress), leave=False)
    with torch.no_grad():
        for start in range(0, n, batch):
            x = noise[start:start + batch].to(device)
            cond = inputs_to(slice_inputs(inputs, start, start + batch), device)
            guided = uncond is not None and guidance_scale != 1.0
            if guided:  # one forward for both: (uncond, cond) stacked along the batch
                cond = concat_inputs(inputs_to(slice_inputs(uncond, start, start + batch), device), cond)
            for t in scheduler.timesteps:
                x_in = torch.cat([x, x]) if guided else x  # (2B or B, C, H, W)
                eps = model(x_in, t.to(device).expand(x_in.shape[0]), **cond).sample
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
                x = scheduler.step(eps, t, x).prev_sample
                bar.update()
            out.append((x.clamp(-1, 1) if clamp else x).float().cpu())
    bar.close()
    return torch.cat(out)
