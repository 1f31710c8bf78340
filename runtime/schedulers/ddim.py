"""DDIM (Song, Meng, Ermon, ICLR 2021, arXiv 2010.02502), in numpy, matching diffusers' DDIMScheduler.

Eq. 12: x_{t-1} = sqrt(a_{t-1}) x0_pred + sqrt(1 - a_{t-1} - sigma_t^2) eps_pred + sigma_t z,
with sigma_t = eta * sqrt((1 - a_{t-1}) / (1 - a_t)) * sqrt(1 - a_t / a_{t-1}) (Eq. 16).
As in diffusers, the previous timestep is t - T // N, even where the spacing put it elsewhere.
"""

from dataclasses import dataclass

import numpy as np

from ._common import PREDICTIONS, alphas_cumprod, check_choice, predicted_x0_and_eps, spaced_timesteps


@dataclass
class SchedulerOutput:
    prev_sample: np.ndarray  # x_{t-1}, (B, C, H, W)
    pred_original_sample: np.ndarray  # x0 as predicted at this step


class DDIMScheduler:
    name = "ddim"
    needs_noise = False  # only when eta > 0

    def __init__(self, config: dict, eta: float = 0.0):
        self.config = dict(config)
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = alphas_cumprod(config)
        self.final_alpha_cumprod = 1.0 if config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        self.prediction_type = config.get("prediction_type", "epsilon")
        check_choice("prediction_type", self.prediction_type, PREDICTIONS)
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        self.spacing = config.get("timestep_spacing", "leading")
        self.steps_offset = int(config.get("steps_offset", 0))
        self.eta = float(eta)
        self.needs_noise = self.eta > 0
        self.init_noise_sigma = 1.0
        self.timesteps = None

    def set_timesteps(self, steps: int) -> None:
        self.num_inference_steps = steps
        self.timesteps = spaced_timesteps(self.spacing, self.num_train_timesteps, steps, self.steps_offset)

    def scale_model_input(self, sample, timestep):
        return sample  # the UNet takes x_t as it is

    def step(self, model_output, timestep: int, sample, noise=None) -> SchedulerOutput:
        # 1. previous timestep (diffusers' rule: t - T // N)
        prev_t = int(timestep) - self.num_train_timesteps // self.num_inference_steps
        # 2. alphas and betas
        a_t = float(self.alphas_cumprod[int(timestep)])
        a_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod
        beta_t, beta_prev = 1.0 - a_t, 1.0 - a_prev
        # 3. predicted x0 and epsilon (Eq. 12)
        x0, eps = predicted_x0_and_eps(self.prediction_type, model_output, sample, a_t)
        # 4. clip x0 (and, as diffusers does, keep eps as the model gave it)
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        # 5. sigma_t (Eq. 16)
        variance = (beta_prev / beta_t) * (1.0 - a_t / a_prev)
        std = self.eta * variance**0.5
        # 6.-7. direction pointing to x_t, then x_{t-1} (Eq. 12)
        direction = (1.0 - a_prev - std**2) ** 0.5 * eps
        prev = a_prev**0.5 * x0 + direction
        if self.eta > 0:
            prev = prev + std * noise
        return SchedulerOutput(prev.astype(np.float32, copy=False), x0)
