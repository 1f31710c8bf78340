"""DPM-Solver++(2M) (Lu et al., 2022, arXiv 2211.01095, Algorithm 2), in numpy, matching diffusers'
DPMSolverMultistepScheduler with algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
lower_order_final=True and final_sigmas_type="zero", with or without use_karras_sigmas (Karras et al. 2022,
Eq. 5, rho = 7, from the training schedule's smallest to its largest sigma; timesteps the nearest training
step in log sigma, rounded as diffusers rounds them except for the cosine schedule, where it truncates).

In the data-prediction form, with lambda = log(alpha / sigma) and h = lambda_t - lambda_s:
  first order  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0
  second order x_t = (sigma_t / sigma_s0) x_s - alpha_t (e^{-h} - 1) (D0 + D1 / 2),  D1 = (m0 - m1) / r0
"""

import numpy as np

from ._common import PREDICTIONS, SPACINGS, alphas_cumprod, check_choice, karras_sigmas, sigma_to_t
from .ddim import SchedulerOutput
from ..errors import DiffPruneError


ONE = np.float32(1.0)


def _alpha_sigma(sigma):
    # float32 scalars, as diffusers computes them: with the cosine schedule the first sigma is ~1e4
    # and float64 coefficients would drift ~1e-3 from diffusers' images.
    sigma = np.float32(sigma)
    alpha = ONE / (sigma**2 + ONE) ** np.float32(0.5)
    return alpha, sigma * alpha


def _lambda(alpha, sigma):
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)  # +inf at sigma = 0 (the final, noise-free step)


class DPMSolverMultistepScheduler:
    name = "dpm-solver++"
    needs_noise = False

    def __init__(self, config: dict):
        self.config = dict(config)
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = alphas_cumprod(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        check_choice("prediction_type", self.prediction_type, PREDICTIONS)
        # DPMSolverMultistepScheduler's own default spacing is linspace; a DDPM/DDIM config names leading.
        self.spacing = config.get("timestep_spacing", "linspace")
        check_choice("timestep_spacing", self.spacing, SPACINGS)
        self.steps_offset = int(config.get("steps_offset", 0))
        self.karras = bool(config.get("use_karras_sigmas"))
        for key in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"):
            if config.get(key):
                raise DiffPruneError(f"The DPM-Solver++ config sets {key}=True, which the runtime does not support; "
                                     "it supports the default and Karras sigmas (use_karras_sigmas). Set "
                                     f"{key} to false in the export's scheduler config, or choose another scheduler.")
        self.init_noise_sigma = 1.0
        self.timesteps = None

    def set_timesteps(self, steps: int) -> None:
        n_train = self.num_train_timesteps
        if not 1 <= steps <= n_train:
            raise DiffPruneError(f"steps {steps} is out of range; allowed 1..{n_train}.")
        if self.spacing == "linspace":
            timesteps = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif self.spacing == "leading":
            ratio = n_train // (steps + 1)
            timesteps = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + self.steps_offset
        else:
            timesteps = np.arange(n_train, 0, -n_train / steps).round().copy().astype(np.int64) - 1
        train = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # (T,) float32, ascending with t
        if self.karras:  # from sigma_min to sigma_max of the training schedule, spaced by Eq. 5
            sigmas = karras_sigmas(float(train[0]), float(train[-1]), steps)
            timesteps = sigma_to_t(sigmas, np.log(train))
            if self.config.get("beta_schedule", "linear") != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)  # torch's .to(int64), which truncates
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # final_sigmas_type="zero"
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self._outputs = [None, None]  # x0 predictions of the last two steps
        self._lower_order_nums = 0
        self._index = 0

    def _x0(self, model_output, sample, sigma: float):
        alpha, sig = _alpha_sigma(sigma)
        if self.prediction_type == "epsilon":
            return (sample - sig * model_output) / alpha
        if self.prediction_type == "sample":
            return model_output
        return alpha * sample - sig * model_output  # v_prediction

    def scale_model_input(self, sample, timestep):
        return sample  # the UNet takes x_t as it is

    def step(self, model_output, timestep: int, sample, noise=None) -> SchedulerOutput:
        i = self._index
        n = len(self.timesteps)
        if int(self.timesteps[i]) != int(timestep):
            raise DiffPruneError(f"timestep {timestep} is not the scheduler's next one ({self.timesteps[i]}); call "
                                 "set_timesteps() before a new sampling loop.")
        # Lower the order at the end for stability (diffusers: final_sigmas_type="zero" forces it).
        lower_final = i == n - 1
        m0 = self._x0(model_output, sample, self.sigmas[i])
        self._outputs = [self._outputs[1], m0]
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[i])
        h = _lambda(alpha_t, sigma_t) - _lambda(alpha_s0, sigma_s0)
        decay = np.exp(-h) - ONE
        if self._lower_order_nums < 1 or lower_final:
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * decay) * m0
        else:
            m1 = self._outputs[0]
            alpha_s1, sigma_s1 = _alpha_sigma(self.sigmas[i - 1])
            r0 = (_lambda(alpha_s0, sigma_s0) - _lambda(alpha_s1, sigma_s1)) / h
            d1 = (ONE / r0) * (m0 - m1)
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * decay) * m0 - np.float32(0.5) * (alpha_t * decay) * d1
        if self._lower_order_nums < 2:
            self._lower_order_nums += 1
        self._index += 1
        return SchedulerOutput(np.asarray(prev, dtype=np.float32), m0)
