"""What every runner shares: input checks against the artifact's spec, and its own timing."""

import time

import numpy as np

from ..errors import DiffPruneError


class Runner:
    """A context manager that runs one model forward on a backend.

    A UNet: ``runner(sample, timestep, **conditioning) -> out_sample``; the pixel UNet takes no
    conditioning, a Stable Diffusion UNet ``encoder_hidden_states`` (and, for SDXL, ``text_embeds`` and
    ``time_ids``; class-conditional ``class_labels``). Any component (text encoder, VAE / VQ decoder, UNet):
    ``runner.infer(name=array, ...) -> {output name: array}``, with the names of its model.json.

    Inputs are checked against the artifact's description (names, shapes, dtypes, batch range)
    before anything reaches the backend, whose own errors are far less readable.
    """

    backend = "?"

    def __init__(self, folder, meta: dict):
        self.folder = folder
        self.meta = meta
        self.batch_range = (meta["batch"]["min"], meta["batch"]["max"])
        self.component = meta.get("component")
        # name -> {"name", "shape", "dtype"}: declared inputs and outputs, in the graph's order
        self.inputs = {i["name"]: i for i in meta.get("inputs", [])}
        self.outputs = [o["name"] for o in meta.get("outputs", [])] or ["out_sample"]
        self.in_channels = meta.get("in_channels")
        self.sample_size = tuple(meta["sample_size"]) if meta.get("sample_size") else None
        self.dynamic_hw = bool(meta.get("dynamic_hw"))
        self.scheduler_config = meta.get("scheduler", {})
        self.calls = 0
        self.seconds = 0.0  # wall time inside the backend, synchronised
        self.fixed_batch = None
        self.auto = None  # what ``--backend auto`` measured and chose (runtime/auto.py), when it chose this runner
        # Give the memory a call used back to the system after each call, where the backend pools it across calls
        # (ONNX Runtime's CPU arena): a pipeline's once-per-image components (text encoder, decoder) set it, so
        # their activations do not stay resident beside the UNet's.
        self.release_after_call = False

    @property
    def conditioning(self) -> list:
        """The UNet's inputs besides sample and timestep (empty for a pixel UNet)."""
        return [n for n in self.inputs if n not in ("sample", "timestep")]

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
        if self.in_channels is None:
            raise DiffPruneError(f"{str(self.folder)!r} is a {self.component or 'model'} without a sample input, "
                                 "not a UNet; call runner.infer(...) with the inputs its model.json names.")
        if sample.ndim != 4 or sample.shape[1] != self.in_channels or (
            not self.dynamic_hw and tuple(sample.shape[2:]) != self.sample_size):
            raise DiffPruneError(
                f"sample has shape {tuple(sample.shape)}; this model takes (B, {self.in_channels}, "
                f"{', '.join(map(str, self.sample_size))}). Generate at the model's sample size."
            )
        self._check_batch(sample.shape[0])
        if not isinstance(timestep, np.ndarray) or timestep.dtype != np.float32 or timestep.shape != (sample.shape[0],):
            raise DiffPruneError(
                f"timestep must be a float32 array of shape ({sample.shape[0]},), one per sample; got "
                f"{getattr(timestep, 'dtype', type(timestep))} {getattr(timestep, 'shape', '')}."
            )

    def _check_batch(self, b: int) -> None:
        lo, hi = self.batch_range
        if not lo <= b <= hi:
            raise DiffPruneError(
                f"Batch {b} is outside this artifact's range {lo}..{hi}. Use a batch in that range, "
                "or re-export (and rebuild) with --min-batch/--max-batch covering it."
            )

    def check_feeds(self, feeds: dict) -> None:
        """Named inputs against model.json: every declared name given and no other, each a numpy array of the
        declared dtype and rank, static dimensions as declared, one batch size shared by all."""
        where = f"the {self.component or 'model'} in {str(self.folder)!r}"
        if set(feeds) != set(self.inputs):
            missing, extra = sorted(set(self.inputs) - set(feeds)), sorted(set(feeds) - set(self.inputs))
            raise DiffPruneError(
                f"{where} takes the inputs {', '.join(self.inputs)}; "
                + (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "")
                + (f"unknown {', '.join(extra)}" if extra else "")
                + ". The export and the pipeline that feeds it disagree: re-export the pipeline.")
        batch = None
        for name, value in feeds.items():
            spec = self.inputs[name]
            dtype = spec.get("dtype", "float32")
            if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype):
                raise DiffPruneError(f"Input {name} of {where} must be a {dtype} numpy array, got "
                                     f"{getattr(value, 'dtype', type(value).__name__)}.")
            shape = spec["shape"]
            bad = value.ndim != len(shape) or any(
                isinstance(d, int) and d != n for d, n in zip(shape[1:], value.shape[1:]))
            if bad:
                raise DiffPruneError(f"Input {name} of {where} has shape {tuple(value.shape)}; the graph takes "
                                     f"({', '.join(map(str, shape))}).")
            if batch is not None and value.shape[0] != batch:
                raise DiffPruneError(f"The inputs of {where} disagree on the batch size: {name} has "
                                     f"{value.shape[0]}, an earlier input {batch}.")
            batch = value.shape[0]
        if batch is not None:
            self._check_batch(batch)

    def __call__(self, sample: np.ndarray, timestep: np.ndarray, **conditioning) -> np.ndarray:
        """One UNet forward: the first output (``out_sample``)."""
        self.check(sample, timestep)
        if conditioning or self.conditioning:
            feeds = {"sample": sample, "timestep": timestep, **conditioning}
            self.check_feeds(feeds)
            return self._timed(self.run_feeds, feeds)[self.outputs[0]]
        return self._timed(self.run, sample, timestep)

    def infer(self, feeds: dict | None = None, **named) -> dict:
        """Any component's forward: ``{output name: array}`` for the named inputs of its model.json."""
        feeds = {**(feeds or {}), **named}
        self.check_feeds(feeds)
        return self._timed(self.run_feeds, feeds)

    def _timed(self, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out

    def run(self, sample, timestep):
        return self.run_feeds({"sample": sample, "timestep": timestep})[self.outputs[0]]

    def run_feeds(self, feeds: dict) -> dict:
        raise NotImplementedError

    def reset_timing(self):
        self.calls, self.seconds = 0, 0.0
