"""DDPM ancestral sampling (Ho, Jain, Abbeel, NeurIPS 2020, arXiv 2006.11239), in numpy, matching
diffusers' DDPMScheduler.

Posterior mean (Eq. 7): mu = sqrt(a_prev) beta_t / (1 - a_t) x0 + sqrt(alpha_t) (1 - a_prev) / (1 - a_t) x_t,
plus noise with variance beta_t (fixed_large) or the posterior variance (fixed_small). With fewer
steps than training timesteps, the previous timestep is the next one in the spaced list.
"""

import numpy as np

from ._common import PREDICTIONS, alphas_cumprod, check_choice, predicted_x0_and_eps, spaced_timesteps
from .ddim import SchedulerOutput
from ..errors import DiffPruneError

ONE = np.float32(1.0)
VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


class DDPMScheduler:
    name = "ddpm"
    needs_noise = True

    def __init__(self, config: dict):
        self.config = dict(config)
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = alphas_cumprod(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        check_choice("prediction_type", self.prediction_type, PREDICTIONS)
        self.variance_type = config.get("variance_type", "fixed_small")
        if self.variance_type in ("learned", "learned_range"):
            raise DiffPruneError(
                f"variance_type {self.variance_type!r} needs a model that predicts its variance; the runtime "
                f"supports {', '.join(VARIANCES)}."
            )
        check_choice("variance_type", self.variance_type, VARIANCES)
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        self.spacing = config.get("timestep_spacing", "leading")
        self.steps_offset = int(config.get("steps_offset", 0))
        self.init_noise_sigma = 1.0
        self.timesteps = None

    def set_timesteps(self, steps: int) -> None:
        self.num_inference_steps = steps
        self.timesteps = spaced_timesteps(self.spacing, self.num_train_timesteps, steps, self.steps_offset)
        self._prev = {int(t): int(p) for t, p in zip(self.timesteps, [*self.timesteps[1:], -1])}

    def _variance_scale(self, a_t, a_prev):
        """The standard deviation of the added noise (float32 scalars, as diffusers computes them)."""
        beta = ONE - a_t / a_prev
        if self.variance_type == "fixed_large":
            return beta**0.5
        if self.variance_type == "fixed_large_log":
            return np.exp(np.float32(0.5) * np.log(beta))
        variance = max((ONE - a_prev) / (ONE - a_t) * beta, np.float32(1e-20))  # posterior variance, Eq. 7
        if self.variance_type == "fixed_small_log":
            return np.exp(np.float32(0.5) * np.log(variance))
        return variance**0.5

    def scale_model_input(self, sample, timestep):
        return sample  # the UNet takes x_t as it is

    def step(self, model_output, timestep: int, sample, noise=None) -> SchedulerOutput:
        t = int(timestep)
        prev_t = self._prev[t]
        # 1. alphas and betas
        # float32 scalars throughout: over 1000 steps float64 coefficients drift ~3e-5 from diffusers
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else ONE
        beta_t, beta_prev = ONE - a_t, ONE - a_prev
        alpha_t = a_t / a_prev
        # 2. predicted x0 (Eq. 15), clipped
        x0, _ = predicted_x0_and_eps(self.prediction_type, model_output, sample, a_t)
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        # 3. posterior mean (Eq. 7)
        prev = (a_prev**0.5 * (ONE - alpha_t)) / beta_t * x0 + alpha_t**0.5 * beta_prev / beta_t * sample
        # 4. noise, except at the last step
        if t > 0:
            prev = prev + self._variance_scale(a_t, a_prev) * noise
        return SchedulerOutput(prev.astype(np.float32, copy=False), x0)
