"""Text-to-image in pixel space, eager PyTorch: the reference the exported ``text-to-image-pixel`` pipelines
(builtin:digits-text) are measured and checked against.

diffusers has no pipeline for a text-conditioned UNet that denoises pixels (StableDiffusionPipeline decodes
latents with its VAE), so this is StableDiffusionPipeline's ``__call__`` without the VAE, step for step:

  1. ``encode_prompt``: the tokenizer pads to its ``model_max_length`` (and truncates), the text encoder's
     ``last_hidden_state`` is what the UNet reads; the negative prompts ("" by default) first
  2. latents (N, C, H, W): ``latents=`` or ``randn`` with ``generator``, times ``init_noise_sigma``
  3. per step: [x; x] through ``scale_model_input`` and the UNet with [uncond; cond] text, then
     eps = eps_u + g (eps_c - eps_u) (Ho & Salimans 2022, Eq. 6; g <= 1: the prompts alone), then the step
  4. the samples are the images: clamp to [-1, 1], then [0, 1] (N, H, W, C) as ``output_type="np"``
"""

from dataclasses import dataclass


@dataclass
class PixelTextOutput:
    images: "object"  # numpy (N, H, W, C) in [0, 1]


class PixelTextPipeline:
    """``PixelTextPipeline(unet, text_encoder, tokenizer, scheduler)(prompts, guidance_scale=1.5, ...)``, with
    StableDiffusionPipeline's arguments where they mean the same."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        self.unet, self.text_encoder, self.tokenizer, self.scheduler = unet, text_encoder, tokenizer, scheduler
        self.device, self.dtype = "cpu", None

    def set_progress_bar_config(self, **kwargs):  # the loop prints nothing; kept for diffusers' interface
        return None

    def to(self, device, dtype=None):
        self.device, self.dtype = device, dtype
        for module in (self.unet, self.text_encoder):
            module.to(device, dtype) if dtype is not None else module.to(device)
        return self

    def encode_prompt(self, prompts: list):
        import torch

        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # (B, L)
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0]  # (B, L, D): last_hidden_state

    def __call__(self, prompt, negative_prompt=None, guidance_scale: float = 7.5, num_inference_steps: int = 50,
                 generator=None, latents=None, output_type: str = "np"):
        import torch

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        negatives = [negative_prompt or ""] * n if negative_prompt is None or isinstance(negative_prompt, str) \
            else list(negative_prompt)
        cfg = guidance_scale > 1.0
        text = self.encode_prompt(negatives + prompts if cfg else prompts)  # (2B or B, L, D)
        cfg_unet = self.unet.config
        size = (cfg_unet.sample_size,) * 2 if isinstance(cfg_unet.sample_size, int) else tuple(cfg_unet.sample_size)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps, device=self.device)
        shape = (n, cfg_unet.in_channels, *size)
        x = latents.to(self.device) if latents is not None else torch.randn(shape, generator=generator).to(self.device)
        x = x * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                x_in = sched.scale_model_input(torch.cat([x, x]) if cfg else x, t)  # (2B or B, C, H, W)
                eps = self.unet(x_in, t, encoder_hidden_states=text.to(x_in.dtype)).sample
                if cfg:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                x = sched.step(eps, t, x, generator=generator).prev_sample
        images = (x.clamp(-1, 1) / 2 + 0.5).float().cpu().permute(0, 2, 3, 1)  # (N, H, W, C) in [0, 1]
        return PixelTextOutput(images=images.numpy() if output_type == "np" else images)
