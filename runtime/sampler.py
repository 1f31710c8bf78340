"""Noise to uint8 images with a runner and a numpy scheduler.

Randomness is per image: image i draws its starting noise (and any per-step noise) from
``numpy.random.default_rng([seed, i])``, so a seed gives the same images on every machine and at
every batch size, for the same backend.

Step caching (DeepCache, Ma, Fang, Wang, CVPR 2024): with ``cache_interval=N`` > 1, steps 0, N, 2N, ... run the
full UNet graph, which also returns the deep feature, and the steps between run the export's shallow graph on
that feature (runtime/formats.py ``read_step_cache``); N = 1 is the plain loop, call for call.
"""

import time

import numpy as np

from .errors import DiffPruneError
from .formats import CACHE_FEATURE, read_step_cache
from .noise import initial_noise, step_noise, step_rngs  # noqa: F401  (initial_noise: re-exported)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)


class StepCache:
    """DeepCache's uniform schedule over one sampling loop: ``unet(k, sample, timestep, **conditioning)`` runs
    the full graph at steps k % interval == 0 (keeping its deep feature) and the shallow graph between.
    The pixel sampler and the pipelines (runtime/pipeline.py) share it.

    ``steps`` given: each graph's last call of the loop gives back the memory its backend pooled for it
    (``Runner.release_after_call``), so a pipeline's decoder does not run beside the UNet's idle activations
    (the dense SD-1.5 pipeline on ort-cpu: peak 6.0 -> 5.3 GB)."""

    def __init__(self, full, shallow, interval: int, steps: int | None = None):
        self.full, self.shallow, self.interval = full, shallow, int(interval)
        self.feature = None
        self.last = None if steps is None else int(steps) - 1

    def __call__(self, k: int, sample, timestep, **conditioning):
        if self.interval == 1 or k % self.interval == 0:
            last_full = self.last is not None and k == self.last - self.last % self.interval
            return self._release(self.full, last_full, self._full, sample, timestep, **conditioning)
        last_shallow = self.last is not None and k == (self.last - 1 if self.last % self.interval == 0 else self.last)
        return self._release(self.shallow, last_shallow, self.shallow, sample, timestep, **conditioning,
                             **{CACHE_FEATURE: self.feature})

    def _full(self, sample, timestep, **conditioning):
        if self.interval == 1:
            return self.full(sample, timestep, **conditioning)
        out = self.full.infer(sample=sample, timestep=timestep, **conditioning)
        self.feature = out[CACHE_FEATURE]  # (B, C_f, H_f, W_f)
        return out[self.full.outputs[0]]

    @staticmethod
    def _release(runner, last: bool, call, *args, **kwargs):
        if not last or getattr(runner, "release_after_call", True):
            return call(*args, **kwargs)
        runner.release_after_call = True
        try:
            return call(*args, **kwargs)
        finally:
            runner.release_after_call = False


class Sampler:
    """Noise -> images with ``runner`` (an open UNet runner) and ``scheduler``; ``cache_interval`` N > 1 caches
    the UNet's deep feature for N - 1 steps (the export's shallow graph, opened on first use; ``close()``)."""

    def __init__(self, runner, scheduler, cache_interval: int = 1):
        self.runner = runner
        self.scheduler = scheduler
        if cache_interval != 1:  # a bad interval, or an export without the shallow graph: an error now
            read_step_cache(getattr(runner, "folder", "the runner"), getattr(runner, "meta", {}), cache_interval)
        self.cache_interval = cache_interval
        self.shallow = None
        self.last_timing = {}

    def close(self):
        if self.shallow is not None:
            self.shallow.close()
            self.shallow = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def initial_noise(self, indices, seed: int) -> np.ndarray:
        c, (h, w) = self.runner.in_channels, self.runner.sample_size
        return initial_noise((c, h, w), indices, seed, self.scheduler.init_noise_sigma)

    def generate(self, n: int, seed: int = 0, steps: int = 50, batch: int | None = None, output: str = "uint8",
                 noise: np.ndarray | None = None):
        """``n`` images: uint8 (N, H, W, C), or float32 (N, C, H, W) in [-1, 1] with ``output="float"``.

        ``noise`` (N, C, H, W) replaces the seeded starting noise (to compare models from the same noise).
        """
        if getattr(self.runner, "conditioning", None):
            raise DiffPruneError(
                f"This UNet is conditioned on {', '.join(self.runner.conditioning)}; the noise -> image sampler runs "
                "unconditional UNets. Sample the pipeline export it belongs to (the folder with pipeline.json), "
                "which feeds the text encoder's output (diffprune.runtime.Pipeline).")
        lo, hi = self.runner.batch_range
        if n < 1:
            raise DiffPruneError(f"n {n} must be at least 1.")
        batch = max(lo, min(n, hi)) if batch is None else batch
        if not lo <= batch <= hi:
            raise DiffPruneError(f"batch {batch} is outside the artifact's range {lo}..{hi}.")
        if self.cache_interval > 1 and self.shallow is None:
            from .runners import open_shallow

            self.shallow = open_shallow(self.runner, self.cache_interval)
        shallow_before = self.shallow.seconds if self.shallow is not None else 0.0
        started, unet_before = time.perf_counter(), self.runner.seconds
        self.scheduler.set_timesteps(steps)  # first: Euler's init_noise_sigma depends on the timesteps
        out = []
        for start in range(0, n, batch):
            indices = list(range(start, min(start + batch, n)))
            pad = max(0, lo - len(indices))  # a short last batch below the engine's minimum: pad, then drop
            x = noise[indices].astype(np.float32) if noise is not None else self.initial_noise(indices, seed)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
            rngs = step_rngs(indices, seed, pad)
            out.append(self._loop(x, steps, rngs)[: len(indices)])
        images = np.concatenate(out)
        total = time.perf_counter() - started
        shallow = (self.shallow.seconds - shallow_before) if self.shallow is not None else 0.0
        unet = self.runner.seconds - unet_before + shallow
        self.last_timing = {"total_s": total, "unet_s": unet, "sampler_s": total - unet,
                            "sampler_share": (total - unet) / total if total else 0.0,
                            "unet_shallow_s": shallow, "cache_interval": self.cache_interval}
        return images if output == "float" else to_uint8(images)

    def _loop(self, x: np.ndarray, steps: int, rngs) -> np.ndarray:
        scheduler = self.scheduler
        scheduler.set_timesteps(steps)
        b = x.shape[0]
        unet = StepCache(self.runner, self.shallow, self.cache_interval)
        for k, t in enumerate(scheduler.timesteps):
            timestep = np.full((b,), float(t), dtype=np.float32)
            out = unet(k, scheduler.scale_model_input(x, t), timestep)
            if not np.isfinite(out).all():
                raise DiffPruneError(
                    f"The model produced NaN/Inf at step {k + 1} of {steps} (timestep {float(t):g}) on backend "
                    f"{self.runner.backend}. With an fp16 artifact this is overflow: use the fp32 export, or keep "
                    "more ops in fp32. No images were written."
                )
            noise = step_noise(rngs, x.shape[1:]) if scheduler.needs_noise else None
            x = scheduler.step(out, t, x, noise=noise).prev_sample
        return x
