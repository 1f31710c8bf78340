"""Seeded noise, per image: image i draws its starting noise from ``numpy.random.default_rng([seed, i])`` and its
per-step noise from ``default_rng([seed, i, 1])``, so a seed gives the same images on every machine and at every
batch size. The pixel sampler, the pipelines and ``auto``'s probe (runtime/auto.py) share it; a module of its own
so that the probe needs no sampler (which opens runners: an import circle otherwise).
"""

import numpy as np


def initial_noise(shape, indices, seed: int, sigma: float = 1.0) -> np.ndarray:
    """(len(indices), *shape) float32 starting noise: image i from ``default_rng([seed, i])``, times ``sigma``
    (the scheduler's ``init_noise_sigma``). The pixel sampler and the pipelines (runtime/pipeline.py) share it."""
    return np.stack([np.random.default_rng([seed, int(i)]).standard_normal(tuple(shape), dtype=np.float32)
                     for i in indices]) * np.float32(sigma)


def step_rngs(indices, seed: int, pad: int = 0) -> list:
    """Per-image generators for the noise a stochastic scheduler adds at each step (``default_rng([seed, i, 1])``),
    plus ``pad`` throw-away ones for the padding rows of a short batch."""
    return [np.random.default_rng([seed, int(i), 1]) for i in indices] + [np.random.default_rng(0)] * pad


def step_noise(rngs, shape) -> np.ndarray:
    """(len(rngs), *shape) float32: one draw per image, so an image's noise does not depend on its batch."""
    return np.stack([r.standard_normal(tuple(shape), dtype=np.float32) for r in rngs])


__all__ = ["initial_noise", "step_rngs", "step_noise"]
