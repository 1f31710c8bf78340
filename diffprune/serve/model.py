"""One replica's model: jobs (from :func:`diffprune.serve.schema.parse_request`) -> PNGs, on the runtime's own
sampling code (:class:`diffprune.runtime.Pipeline` for pipeline exports, :class:`diffprune.runtime.Sampler`
for UNet exports). No Ray here: the deployment in app.py wraps it, and tests can run it alone.

Batching across requests: jobs with the same steps, scheduler and guidance are run as one call of the
runtime, their images concatenated along the batch. Each request's starting noise is drawn from its own seed
with the runtime's :func:`initial_noise` (image i of a request from ``default_rng([seed, i])``), exactly as
`diffprune sample` draws it alone, and passed as the call's ``noise``; the runtime keeps every image's
computation independent of its batch, so a request's images are those it gets alone.
"""

import base64
import threading
import time

import numpy as np

from diffprune.runtime.errors import DiffPruneError

from .config import ServeConfig
from .schema import batch_key


class Cancelled(Exception):
    """Every request of a group was cancelled or is past its deadline; the group stopped between UNet calls."""


class _Guard:
    """The UNet runner, checking ``stop()`` before each forward, so abandoned work ends at the next step."""

    def __init__(self, runner, stop):
        self._runner, self._stop = runner, stop

    def __call__(self, *args, **kwargs):
        if self._stop():
            raise Cancelled()
        return self._runner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._runner, name)


class ServedModel:
    """``ServedModel(config).open()``; ``run(jobs)`` -> one result dict per job (``images`` as base64 PNGs, the
    ``config`` that ran, ``timings``), or ``{"error": {"status", "message"}}`` for a job that failed."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.pipe = self.runner = None
        self.lock = threading.Lock()  # one runtime call at a time per replica: its threads are the replica's cores
        self.backend = None
        self.started = self.load_s = None

    def open(self):
        from diffprune.runtime import Pipeline, open_runner

        started = time.perf_counter()
        c = self.config
        if c.kind == "pipeline":
            self.pipe = Pipeline(c.artifact, c.backend, threads=c.replica_threads).open()
            self.backend = self.pipe.runners["unet"].backend
        else:
            self.runner = open_runner(c.artifact, c.backend, threads=c.replica_threads).open()
            self.backend = self.runner.backend
        self.load_s = time.perf_counter() - started
        return self

    def close(self):
        for thing in (self.pipe, self.runner):
            if thing is not None:
                thing.close()
        self.pipe = self.runner = None

    @property
    def unet(self):
        return self.pipe.runners["unet"] if self.pipe is not None else self.runner

    def check(self) -> None:
        """Raise unless the model is loaded (Ray Serve's check_health calls this)."""
        if self.unet is None:
            raise RuntimeError("the model is not loaded")

    # -- batching ---------------------------------------------------------------------------------------

    def groups(self, jobs: list) -> list:
        """Lists of job indices that can share UNet calls, in arrival order."""
        from diffprune.runtime.schedulers import make_scheduler

        scheduler_config = self.pipe.scheduler_config if self.pipe is not None else self.runner.scheduler_config
        out = {}
        for i, job in enumerate(jobs):
            stochastic = make_scheduler(job["scheduler"], scheduler_config).needs_noise
            out.setdefault(batch_key(job, stochastic, i), []).append(i)
        return list(out.values())

    def run(self, jobs: list) -> list:
        results = [None] * len(jobs)
        for group in self.groups(jobs):
            batch = [jobs[i] for i in group]
            try:
                outs = self.run_group(batch)
            except Cancelled:
                outs = [{"error": {"status": 504, "message": "The request passed its deadline (deadline_s, or the "
                                                             "server's --timeout) and its work was stopped."}}] * len(batch)
            except DiffPruneError as e:
                outs = [{"error": {"status": 422, "message": str(e)}}] * len(batch)
            except Exception as e:  # a bug, not the request: still one answer per request, and the replica lives on
                outs = [{"error": {"status": 500, "message": f"The model failed on this request: "
                                                            f"{type(e).__name__}: {e}"}}] * len(batch)
            for i, out in zip(group, outs):
                results[i] = out
        return results

    def run_group(self, jobs: list) -> list:
        """One runtime call for ``jobs`` (equal batch keys): per-request noise, concatenated; images split back."""
        from diffprune.runtime import Sampler, make_scheduler
        from diffprune.runtime.sampler import initial_noise

        def stop():
            return time.time() > max(j["deadline"] for j in jobs) or all(
                j.get("cancel") is not None and j["cancel"].is_set() for j in jobs)

        if stop():
            raise Cancelled()
        first, c = jobs[0], self.config
        counts = [j["n"] for j in jobs]
        with self.lock:
            started = time.time()
            unet = self.unet
            shape = (unet.in_channels, *unet.sample_size)
            if self.pipe is not None:
                # standard normal per request; the pipeline scales it by init_noise_sigma as it scales its own draw
                noise = np.concatenate([initial_noise(shape, range(j["n"]), j["seed"]) for j in jobs])
                prompts = sum((j["prompts"] for j in jobs), []) if first["prompts"] is not None else None
                negatives = sum((j["negatives"] for j in jobs), []) if first["negatives"] is not None else None
                labels = [j["class_label"] for j in jobs for _ in range(j["n"])] if first["class_label"] is not None \
                    else None
                self.pipe.runners["unet"] = _Guard(unet, stop)
                try:
                    images = self.pipe.generate(prompts, n=sum(counts), negative_prompt=negatives,
                                                guidance=first["guidance"], steps=first["steps"],
                                                scheduler=first["scheduler"], batch=self._batch(sum(counts)),
                                                noise=noise, class_labels=labels)
                finally:
                    self.pipe.runners["unet"] = unet
                timing = dict(self.pipe.last_timing)
            else:
                scheduler = make_scheduler(first["scheduler"], unet.scheduler_config)
                sampler = Sampler(_Guard(unet, stop), scheduler)
                scheduler.set_timesteps(first["steps"])  # Euler's init_noise_sigma depends on the timesteps
                # the sampler's own draw, scaled as Sampler.generate scales it when it draws for one seed
                noise = np.concatenate([sampler.initial_noise(range(j["n"]), j["seed"]) for j in jobs])
                calls = unet.calls
                images = sampler.generate(sum(counts), steps=first["steps"], batch=self._batch(sum(counts)),
                                          noise=noise)
                timing = {**sampler.last_timing, "unet_calls": unet.calls - calls, "scheduler": first["scheduler"],
                          "steps": first["steps"], "guidance": 1.0}
        from diffprune.runtime.image import encode_png

        out, start = [], 0
        for job, count in zip(jobs, counts):
            pngs = [base64.b64encode(encode_png(im)).decode("ascii") for im in images[start:start + count]]
            start += count
            out.append({
                "images": pngs,
                "config": {"target": c.target, "artifact": c.artifact, "kind": c.kind, "backend": self.backend,
                           "threads": c.replica_threads, "n": count, "steps": job["steps"],
                           "scheduler": job["scheduler"], "guidance": job["guidance"], "seed": job["seed"],
                           "prompts": job["prompts"], "negative_prompts": job["negatives"],
                           "class_label": job["class_label"], "image_size": list(images.shape[1:3])},
                "timings": {"queue_s": started - job["accepted"], **{k: v for k, v in timing.items()
                                                                     if k.endswith("_s") or k == "unet_calls"},
                            "batch_requests": len(jobs), "batch_images": sum(counts)},
            })
        return out

    def _batch(self, n: int) -> int | None:
        """Images per UNet call: the configured batch where set (capped to the group), else the runtime's choice."""
        return min(self.config.batch, n) if self.config.batch else None
