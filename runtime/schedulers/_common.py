"""Noise schedules shared by the numpy schedulers, computed as diffusers computes them (float32)."""

import math

import numpy as np

from ..errors import DiffPruneError

SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def betas_from_config(config: dict) -> np.ndarray:
    """(T,) float32 betas for ``beta_schedule`` linear, scaled_linear or squaredcos_cap_v2, or ``trained_betas``."""
    num = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if schedule == "linear":
        return np.linspace(start, end, num, dtype=np.float32)
    if schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return np.linspace(start**0.5, end**0.5, num, dtype=np.float32) ** 2
    if schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17, betas capped at 0.999
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / num) / alpha_bar(i / num), 0.999) for i in range(num)],
                        dtype=np.float32)
    raise DiffPruneError(
        f"beta_schedule {schedule!r} is not supported by the runtime; allowed: linear, scaled_linear, "
        "squaredcos_cap_v2 (or trained_betas)."
    )


def alphas_cumprod(config: dict) -> np.ndarray:
    if config.get("rescale_betas_zero_snr"):
        raise DiffPruneError("rescale_betas_zero_snr=True is not supported by the runtime schedulers.")
    if config.get("thresholding"):
        raise DiffPruneError("thresholding=True (dynamic thresholding) is not supported by the runtime schedulers.")
    # alphas in float32 as diffusers has them, the running product in float64 as torch's CPU cumprod
    # accumulates float32 (its acc_type is double), then float32 again: bit-for-bit diffusers' table.
    alphas = 1.0 - betas_from_config(config)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise DiffPruneError(f"{name} {value!r} is not supported; allowed: {', '.join(map(str, allowed))}.")


def spaced_timesteps(spacing: str, num_train: int, steps: int, offset: int = 0) -> np.ndarray:
    """The inference timesteps, descending, as diffusers' DDPM/DDIM ``set_timesteps`` makes them."""
    check_choice("timestep_spacing", spacing, SPACINGS)
    if not 1 <= steps <= num_train:
        raise DiffPruneError(f"steps {steps} is out of range; allowed 1..{num_train} (num_train_timesteps).")
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = num_train // steps
        top = (steps - 1) * ratio + offset
        if top >= num_train:  # diffusers indexes alphas_cumprod[top] here and fails with an IndexError
            raise DiffPruneError(
                f"steps {steps} with timestep_spacing 'leading' and steps_offset {offset} would start at timestep "
                f"{top}, past the schedule's last one ({num_train - 1}). Use fewer steps "
                f"(at most {num_train - offset} here), or a scheduler config with steps_offset 0 or timestep_spacing 'trailing'.")
        return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + offset
    ratio = num_train / steps
    return np.round(np.arange(num_train, 0, -ratio)).astype(np.int64) - 1


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """(steps,) float64 sigmas, descending: Karras et al. 2022 (arXiv 2206.00364), Eq. 5 with rho = 7,
    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, as diffusers'
    ``_convert_to_karras`` (from k-diffusion) computes it."""
    rho = 7.0  # the paper's choice, and diffusers'
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of ``sigmas``: linear interpolation in log sigma between the two training
    timesteps around each (diffusers' ``_sigma_to_t``, vectorised; ``log_sigmas`` (T,) ascending with t)."""
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))  # (N,)
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, N)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)  # (N,)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def predicted_x0_and_eps(prediction: str, model_output, sample, alpha_prod_t: float):
    """x0 and epsilon from the model's output (DDIM paper Eq. 12; v from Salimans & Ho 2022, Eq. 5)."""
    beta_prod_t = 1.0 - alpha_prod_t
    if prediction == "epsilon":
        x0 = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        return x0, model_output
    if prediction == "sample":
        return model_output, (sample - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
    if prediction == "v_prediction":
        return (alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output,
                alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample)
    raise DiffPruneError(f"prediction_type {prediction!r} is not supported; allowed: {', '.join(PREDICTIONS)}.")
