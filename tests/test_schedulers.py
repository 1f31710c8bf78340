"""The numpy schedulers against diffusers: same model outputs and noise -> same loop to 1e-5."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

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


@pytest.mark.parametrize("extra", [
    dict(), dict(timestep_spacing="leading", steps_offset=1), dict(prediction_type="v_prediction"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    # Not the cosine schedule: there diffusers' own Karras loop starts at its second timestep (the first two
    # are both 999) and runs off its sigmas (IndexError in diffusers 0.42).
])
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_dpm_solver_pp_2m_karras_matches_diffusers(extra, steps):
    # "DPM++ 2M Karras": the sigmas of Karras et al. Eq. 5 between the schedule's ends.
    config = {**BASE, **extra}
    x, noises = _inputs(steps)
    t_ours, ours = _loop_ours("dpm-solver++-karras", config, steps, x, noises)
    t_ref, ref = _loop_diffusers(DPMSolverMultistepScheduler, {**config, "algorithm_type": "dpmsolver++", "solver_order": 2,
                                                                "use_karras_sigmas": True}, steps, x, noises)
    np.testing.assert_array_equal(t_ours, t_ref)
    assert np.abs(ours - ref).max() <= 1e-5
    plain = make_scheduler("dpm-solver++", {**config, "use_karras_sigmas": True})  # the name wins over the config
    plain.set_timesteps(steps)
    assert not np.array_equal(plain.timesteps, t_ours)


def test_karras_sigmas_are_eq_5():
    # Karras et al. Eq. 5 by hand at N = 3, rho = 7: the ends, and the middle at the mean of sigma^(1/7).
    from diffprune.runtime.schedulers._common import karras_sigmas

    s = karras_sigmas(0.1, 10.0, 3)
    assert s[0] == pytest.approx(10.0) and s[-1] == pytest.approx(0.1)
    assert s[1] == pytest.approx(((0.1 ** (1 / 7) + 10.0 ** (1 / 7)) / 2) ** 7)


def test_scheduler_names_pick_the_karras_variant():
    from diffprune.runtime.formats import scheduler_name

    assert scheduler_name({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}) == "euler-karras"
    assert scheduler_name({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}) == "dpm-solver++-karras"
    assert scheduler_name({"_class_name": "DDIMScheduler", "use_karras_sigmas": True}) == "ddim"
    assert make_scheduler("euler-karras", BASE).name == "euler-karras"


EULER_CASES = [
    dict(),  # linspace spacing: fractional timesteps, sigmas interpolated between training steps
    dict(timestep_spacing="leading", steps_offset=1),  # SD-1.x's config: init_noise_sigma = sqrt(sigma_max^2 + 1)
    dict(timestep_spacing="trailing"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1),
    dict(prediction_type="v_prediction"),
    dict(prediction_type="sample", final_sigmas_type="sigma_min"),
    dict(beta_schedule="squaredcos_cap_v2"),
]


KARRAS_EULER_CASES = [
    dict(),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1),
    dict(timestep_spacing="trailing", prediction_type="v_prediction"),
    dict(sigma_min=0.05, sigma_max=10.0),  # the config's ends instead of the schedule's
]


@pytest.mark.parametrize("extra, name", [(e, "euler") for e in EULER_CASES]
                         + [({**e, "use_karras_sigmas": True}, "euler-karras") for e in KARRAS_EULER_CASES])
@pytest.mark.parametrize("steps", [4, 25])
def test_euler_matches_diffusers(extra, name, steps):
    # The loop as StableDiffusionPipeline runs it: noise * init_noise_sigma, scale_model_input, step.
    config = {**BASE, **extra}
    x, _ = _inputs(steps)
    ours = make_scheduler(name, config)
    ours.set_timesteps(steps)
    ref = EulerDiscreteScheduler.from_config(config)
    ref.set_timesteps(steps)
    if name == "euler-karras":  # fractional timesteps from log sigma: float32 rounding of the table, 1e-7 apart
        np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert abs(ours.init_noise_sigma - float(ref.init_noise_sigma)) <= 1e-6 * float(ref.init_noise_sigma)
    a, b = x * np.float32(ours.init_noise_sigma), torch.from_numpy(x) * ref.init_noise_sigma
    # Relative to the starting latents: with the cosine schedule sigma_max is 2e4, and float32 rounding of
    # latents that large, cancelled by the first step, leaves absolute differences of ~1e-4 in both.
    scale = float(b.abs().max()) if ours.init_noise_sigma > 100 else 1.0
    for t_ours, t_ref in zip(ours.timesteps, ref.timesteps):
        a_in, b_in = ours.scale_model_input(a, t_ours), ref.scale_model_input(b, t_ref)
        assert np.abs(a_in - b_in.numpy()).max() <= 1e-5 * scale
        out_a, out_b = fake_model(a_in, t_ours, config), fake_model(b_in.numpy(), float(t_ref), config)
        a = ours.step(out_a, t_ours, a).prev_sample
        b = ref.step(torch.from_numpy(out_b), t_ref, b).prev_sample
    assert np.abs(a - b.numpy()).max() <= 1e-5 * scale


def test_euler_refuses_what_it_does_not_implement():
    for extra, fragment in [(dict(use_exponential_sigmas=True), "use_exponential_sigmas"),
                            (dict(interpolation_type="log_linear"), "interpolation_type 'log_linear'"),
                            (dict(timestep_type="continuous"), "timestep_type 'continuous'"),
                            (dict(final_sigmas_type="one"), "final_sigmas_type 'one'")]:
        with pytest.raises(DiffPruneError, match=fragment):
            make_scheduler("euler", {**BASE, **extra})
    s = make_scheduler("euler", BASE)
    s.set_timesteps(5)
    with pytest.raises(DiffPruneError, match="not the scheduler's next one"):
        s.step(np.zeros((1, 3, 8, 8), np.float32), s.timesteps[1], np.zeros((1, 3, 8, 8), np.float32))


def test_ddim_steps_to_t_minus_T_over_N_like_diffusers():
    # diffusers' quirk: with "trailing" spacing the timesteps are 999, 949, ..., but each step
    # still goes to t - T // N; we reproduce it rather than "fix" it, so images match diffusers'.
    s = make_scheduler("ddim", {**BASE, "timestep_spacing": "trailing"})
    s.set_timesteps(20)
    assert list(s.timesteps[:3]) == [999, 949, 899]


@pytest.mark.parametrize("name, config, fragment", [
    ("pndm", BASE, "Unknown scheduler 'pndm'"),
    ("ddim", {**BASE, "timestep_spacing": "karras"}, "timestep_spacing 'karras'"),
    ("ddim", {**BASE, "prediction_type": "flow"}, "prediction_type 'flow'"),
    ("ddim", {**BASE, "beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'"),
    ("ddpm", {**BASE, "variance_type": "learned_range"}, "predicts its variance"),
])
def test_bad_scheduler_settings(name, config, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        s = make_scheduler(name, config)
        s.set_timesteps(10)


def test_leading_spacing_with_offset_past_the_schedule_is_a_clear_error():
    # SD's config (steps_offset 1, leading) at 1000 steps would start at t = 1000: diffusers fails with an
    # IndexError inside step(); the runtime says what to change before sampling starts.
    s = make_scheduler("ddim", {**BASE, "steps_offset": 1, "timestep_spacing": "leading"})
    with pytest.raises(DiffPruneError, match="would start at timestep 1000.*at most 999"):
        s.set_timesteps(1000)
    s.set_timesteps(999)
    assert s.timesteps[0] == 999 and s.timesteps[-1] == 1
