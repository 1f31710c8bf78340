"""Euler (Karras, Aittala, Aila, Laine, NeurIPS 2022, arXiv 2206.00364, Algorithm 2 without churn), in numpy,
matching diffusers' EulerDiscreteScheduler, which many Stable Diffusion configs name.

The DDPM chain is read in the sigma parameterisation x = x0 + sigma * eps, sigma_t = sqrt((1 - a_t) / a_t):
  model input   x / sqrt(sigma_i^2 + 1)                  (``scale_model_input``: the UNet was trained on x_t)
  denoised      D = x - sigma_i * eps                    (epsilon; v and x0 predictions below)
  Euler step    x_{i+1} = x_i + (x_i - D) / sigma_i * (sigma_{i+1} - sigma_i)     (Eq. 7's ODE, one step)
The starting noise has standard deviation ``init_noise_sigma`` (sigma_max, or sqrt(sigma_max^2 + 1) with
"leading" spacing, as diffusers has it). The timesteps the UNet sees are floats: linspace spacing puts
them between the training timesteps, and sigma is interpolated linearly there.

Supported as diffusers configures it: timestep_spacing linspace (its default) / leading / trailing,
interpolation_type "linear", final_sigmas_type zero / sigma_min, prediction_type epsilon / v_prediction /
sample, and use_karras_sigmas (Karras et al. Eq. 5, rho = 7, between the interpolated sigmas' ends or the
config's sigma_min / sigma_max; the timesteps the UNet sees are those sigmas' fractional training timesteps).
Not supported (a clear error): exponential and beta sigmas, log-linear interpolation, continuous timesteps,
and churn (s_churn > 0, which diffusers' pipelines never pass).
"""

import numpy as np

from ._common import PREDICTIONS, SPACINGS, alphas_cumprod, check_choice, karras_sigmas, sigma_to_t
from .ddim import SchedulerOutput
from ..errors import DiffPruneError

ONE = np.float32(1.0)


class EulerDiscreteScheduler:
    name = "euler"
    needs_noise = False  # deterministic without churn

    def __init__(self, config: dict):
        self.config = dict(config)
        self.karras = bool(config.get("use_karras_sigmas"))
        for key in ("use_exponential_sigmas", "use_beta_sigmas"):
            if config.get(key):
                raise DiffPruneError(f"The Euler scheduler config sets {key}=True, which the runtime does not support; "
                                     "it supports the default sigmas (interpolated from the training schedule). Set "
                                     f"{key} to false in the export's scheduler config, or choose another scheduler.")
        check_choice("interpolation_type", config.get("interpolation_type", "linear"), ("linear",))
        check_choice("timestep_type", config.get("timestep_type", "discrete"), ("discrete",))
        self.final_sigmas_type = config.get("final_sigmas_type", "zero")
        check_choice("final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = alphas_cumprod(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        check_choice("prediction_type", self.prediction_type, PREDICTIONS)
        self.spacing = config.get("timestep_spacing", "linspace")  # EulerDiscreteScheduler's own default
        check_choice("timestep_spacing", self.spacing, SPACINGS)
        self.steps_offset = int(config.get("steps_offset", 0))
        # (T,) float32: sigma at each training timestep, ascending with t
        self.train_sigmas = ((ONE - self.alphas_cumprod) / self.alphas_cumprod) ** np.float32(0.5)
        self.timesteps = None
        self.sigmas = None
        self._index = 0
        self.init_noise_sigma = self._init_noise_sigma(float(self.train_sigmas.max()))

    def _init_noise_sigma(self, max_sigma: float) -> float:
        # x_T = x0 + sigma_max * eps has variance sigma_max^2 + 1 around zero; diffusers uses sigma_max alone
        # for linspace and trailing spacing (where sigma_max is ~14.6, so the two differ by 0.3 %).
        sigma = np.float32(max_sigma)
        return float(sigma if self.spacing in ("linspace", "trailing") else (sigma**2 + ONE) ** np.float32(0.5))

    def set_timesteps(self, steps: int) -> None:
        n_train = self.num_train_timesteps
        if not 1 <= steps <= n_train:
            raise DiffPruneError(f"steps {steps} is out of range; allowed 1..{n_train} (num_train_timesteps).")
        if self.spacing == "linspace":
            timesteps = np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].copy()
        elif self.spacing == "leading":
            ratio = n_train // steps
            timesteps = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32) + self.steps_offset
        else:
            timesteps = np.arange(n_train, 0, -n_train / steps).round().copy().astype(np.float32) - 1
        # sigma between training timesteps: linear interpolation (in float64, as numpy's interp computes it)
        sigmas = np.interp(timesteps, np.arange(n_train), self.train_sigmas)
        if self.karras:  # the same ends, spaced by Eq. 5; the UNet sees each sigma's (fractional) timestep
            lo, hi = self.config.get("sigma_min"), self.config.get("sigma_max")
            sigmas = karras_sigmas(float(sigmas[-1]) if lo is None else lo, float(sigmas[0]) if hi is None else hi, steps)
            timesteps = sigma_to_t(sigmas, np.log(self.train_sigmas))
        last = float(self.train_sigmas[0]) if self.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)  # (steps + 1,), the last one 0
        self.timesteps = timesteps.astype(np.float32)
        self.num_inference_steps = steps
        self.init_noise_sigma = self._init_noise_sigma(float(self.sigmas.max()))
        self._index = 0

    def scale_model_input(self, sample, timestep):
        """x_t from x = x0 + sigma eps: divide by sqrt(sigma^2 + 1), the scale the UNet was trained at."""
        sigma = self.sigmas[self._index]
        return (sample / (sigma**2 + ONE) ** np.float32(0.5)).astype(np.float32, copy=False)

    def step(self, model_output, timestep, sample, noise=None) -> SchedulerOutput:
        i = self._index
        if self.timesteps is None or i >= len(self.timesteps) or float(self.timesteps[i]) != float(timestep):
            expected = None if self.timesteps is None or i >= len(self.timesteps) else float(self.timesteps[i])
            raise DiffPruneError(f"timestep {timestep} is not the scheduler's next one ({expected}); call "
                                 "set_timesteps() before a new sampling loop.")
        # 1. sigma of this step and of the next (no churn: sigma_hat = sigma)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        # 2. denoised estimate D(x; sigma)
        if self.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        elif self.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction (Salimans & Ho 2022) in the sigma parameterisation
            x0 = model_output * (-sigma / (sigma**2 + ONE) ** np.float32(0.5)) + sample / (sigma**2 + ONE)
        # 3. the ODE's derivative dx/dsigma, then one Euler step to sigma_next
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_next - sigma)
        self._index += 1
        return SchedulerOutput(np.asarray(prev, dtype=np.float32), np.asarray(x0, dtype=np.float32))
