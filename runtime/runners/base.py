"""What every runner shares: input checks against the artifact's spec, and its own timing."""

import time

import numpy as np

from ..errors import DiffPruneError


class Runner:
    """A context manager that runs one UNet forward: ``runner(sample, timestep) -> out_sample``.

    Inputs are checked against the artifact's description (names, shapes, dtypes, batch range)
    before anything reaches the backend, whose own errors are far less readable.
    """

    backend = "?"

    def __init__(self, folder, meta: dict):
        self.folder = folder
        self.meta = meta
        self.batch_range = (meta["batch"]["min"], meta["batch"]["max"])
        self.in_channels = meta["in_channels"]
        self.sample_size = tuple(meta["sample_size"])
        self.dynamic_hw = bool(meta.get("dynamic_hw"))
        self.scheduler_config = meta.get("scheduler", {})
        self.calls = 0
        self.seconds = 0.0  # wall time inside the backend, synchronised
        self.fixed_batch = None

    def pin_batch(self, batch: int | None) -> None:
        """Accept only ``batch`` from now on (the backend fixes the graph's batch dimension to it)."""
        if batch is None:
            return
        lo, hi = self.batch_range
        if not lo <= int(batch) <= hi:
            raise DiffPruneError(f"Batch {batch} is outside this artifact's range {lo}..{hi}; pin a batch in "
                                 "that range, or re-export with --min-batch/--max-batch covering it.")
        self.batch_range = (int(batch), int(batch))
        self.fixed_batch = int(batch)

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self):
        raise NotImplementedError

    def close(self):
        pass

    def check(self, sample: np.ndarray, timestep: np.ndarray) -> None:
        if not isinstance(sample, np.ndarray) or sample.dtype != np.float32:
            raise DiffPruneError(f"sample must be a float32 numpy array, got {getattr(sample, 'dtype', type(sample))}.")
        if sample.ndim != 4 or sample.shape[1] != self.in_channels or (
            not self.dynamic_hw and tuple(sample.shape[2:]) != self.sample_size):
            raise DiffPruneError(
                f"sample has shape {tuple(sample.shape)}; this model takes (B, {self.in_channels}, "
                f"{', '.join(map(str, self.sample_size))}). Generate at the model's sample size."
            )
        lo, hi = self.batch_range
        if not lo <= sample.shape[0] <= hi:
            raise DiffPruneError(
                f"Batch {sample.shape[0]} is outside this artifact's range {lo}..{hi}. Use a batch in that range, "
                "or re-export (and rebuild) with --min-batch/--max-batch covering it."
            )
        if not isinstance(timestep, np.ndarray) or timestep.dtype != np.float32 or timestep.shape != (sample.shape[0],):
            raise DiffPruneError(
                f"timestep must be a float32 array of shape ({sample.shape[0]},), one per sample; got "
                f"{getattr(timestep, 'dtype', type(timestep))} {getattr(timestep, 'shape', '')}."
            )

    def __call__(self, sample: np.ndarray, timestep: np.ndarray) -> np.ndarray:
        self.check(sample, timestep)
        started = time.perf_counter()
        out = self.run(sample, timestep)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out

    def run(self, sample, timestep):
        raise NotImplementedError

    def reset_timing(self):
        self.calls, self.seconds = 0, 0.0
