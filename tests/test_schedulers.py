"""The numpy schedulers against diffusers: same model outputs and noise -> same loop to 1e-5."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from diffprune import DiffPruneError
from diffprune.runtime.schedulers import make_scheduler
from diffprune.runtime.schedulers._common import alphas_cumprod

BASE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


X0 = np.random.default_rng(1).uniform(-0.9, 0.9, (2, 3, 8, 8)).astype(np.float32)


def fake_model(x, t, config):
    """Deterministic stand-in for a trained UNet: the ideal denoiser of one fixed image X0, plus a small
    nonlinear error. Like a real model it keeps x0 bounded, so 1000-step loops compare arithmetic
    rather than amplify float32 rounding."""
    a = float(alphas_cumprod(config)[int(t)])
    eps = (x - a**0.5 * X0) / (1 - a) ** 0.5 + 0.05 * np.tanh(x)
    prediction = config.get("prediction_type", "epsilon")
    if prediction == "sample":
        return (X0 + 0.05 * np.tanh(x)).astype(np.float32)
    if prediction == "v_prediction":
        return (a**0.5 * eps - (1 - a) ** 0.5 * X0).astype(np.float32)
    return eps.astype(np.float32)


def _loop_ours(name, config, steps, x, noises, **kwargs):
    s = make_scheduler(name, config, **kwargs)
    s.set_timesteps(steps)
    for i, t in enumerate(s.timesteps):
        x = s.step(fake_model(x, t, config), int(t), x, noise=noises[i]).prev_sample
    return s.timesteps, x


def _loop_diffusers(cls, config, steps, x, noises, monkeypatch=None, **step_kwargs):
    s = cls.from_config(config)
    s.set_timesteps(steps)
    x = torch.from_numpy(x)
    for i, t in enumerate(s.timesteps):
        out = torch.from_numpy(fake_model(x.numpy(), int(t), config))
        if monkeypatch is not None:  # make diffusers draw exactly our noise
            monkeypatch.setattr("diffusers.schedulers.scheduling_ddpm.randn_tensor",
                                lambda *a, _n=noises[i], **k: torch.from_numpy(_n))
        kwargs = dict(step_kwargs)
        if "eta" in kwargs and kwargs["eta"] > 0:
            kwargs["variance_noise"] = torch.from_numpy(noises[i])
        x = s.step(out, t, x, **kwargs).prev_sample
    return s.timesteps.numpy(), x.numpy()


def _inputs(steps, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.standard_normal((steps, 2, 3, 8, 8)).astype(np.float32)


DDIM_CASES = [
    dict(),
    dict(timestep_spacing="trailing"),
    dict(timestep_spacing="linspace"),
    dict(steps_offset=1, set_alpha_to_one=False),
    dict(prediction_type="v_prediction", clip_sample=False),
    dict(prediction_type="sample", clip_sample_range=0.5),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False),
    dict(beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("extra", DDIM_CASES)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(extra, eta):
    config = {**BASE, **extra}
    x, noises = _inputs(20)
    t_ours, ours = _loop_ours("ddim", config, 20, x, noises, eta=eta)
    t_ref, ref = _loop_diffusers(DDIMScheduler, config, 20, x, noises, eta=eta)
    np.testing.assert_array_equal(t_ours, t_ref)
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("extra", [
    dict(), dict(variance_type="fixed_large"), dict(variance_type="fixed_small_log"),
    dict(timestep_spacing="trailing", prediction_type="v_prediction"), dict(timestep_spacing="linspace", clip_sample=False),
])
@pytest.mark.parametrize("steps", [25, 1000])
def test_ddpm_matches_diffusers(extra, steps, monkeypatch):
    config = {**BASE, **extra}
    x, noises = _inputs(steps)
    t_ours, ours = _loop_ours("ddpm", config, steps, x, noises)
    t_ref, ref = _loop_diffusers(DDPMScheduler, config, steps, x, noises, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(t_ours, t_ref)
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("extra", [
    dict(), dict(timestep_spacing="leading", steps_offset=1), dict(timestep_spacing="trailing"),
    dict(prediction_type="v_prediction"), dict(prediction_type="sample"),
    dict(beta_schedule="squaredcos_cap_v2"),
])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_matches_diffusers(extra, steps):
    config = {**BASE, **extra}
    x, noises = _inputs(steps)
    t_ours, ours = _loop_ours("dpm-solver++", config, steps, x, noises)
    t_ref, ref = _loop_diffusers(DPMSolverMultistepScheduler, {**config, "algorithm_type": "dpmsolver++", "solver_order": 2},
                                 steps, x, noises)
    np.testing.assert_array_equal(t_ours, t_ref)
    assert np.abs(ours - ref).max() <= 1e-5


def test_ddim_steps_to_t_minus_T_over_N_like_diffusers():
    # diffusers' quirk: with "trailing" spacing the timesteps are 999, 949, ..., but each step
    # still goes to t - T // N; we reproduce it rather than "fix" it, so images match diffusers'.
    s = make_scheduler("ddim", {**BASE, "timestep_spacing": "trailing"})
    s.set_timesteps(20)
    assert list(s.timesteps[:3]) == [999, 949, 899]


@pytest.mark.parametrize("name, config, fragment", [
    ("euler", BASE, "Unknown scheduler 'euler'"),
    ("ddim", {**BASE, "timestep_spacing": "karras"}, "timestep_spacing 'karras'"),
    ("ddim", {**BASE, "prediction_type": "flow"}, "prediction_type 'flow'"),
    ("ddim", {**BASE, "beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'"),
    ("ddpm", {**BASE, "variance_type": "learned_range"}, "predicts its variance"),
])
def test_bad_scheduler_settings(name, config, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        s = make_scheduler(name, config)
        s.set_timesteps(10)
