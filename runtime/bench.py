"""End-to-end latency: noise -> uint8 images, scheduler and post-processing included; for pipeline
exports prompt -> uint8 images, with the time of each component (text encoders, UNet, decoder, sampler).

Every model runs in a process of its own, as it would be deployed, and the parent asks them in
turn for one timed run each (A B A B ...), so machine drift hits all alike. One process holding
several ONNX Runtime sessions (or a torch model beside them) is not a fair stage: each session's
worker threads spin for a while after their own run and take cores from the next session; on the
2-core CI machine that made one CIFAR-10 UNet call take 107 ms instead of 67-74 ms (dense) and 77 ms
instead of 40 ms (pruned). Workers that wait on a pipe sleep instead.

Each worker also reports its peak resident memory (VmHWM) at the end and before loading the
model, so memory is that of a fresh process serving one model at that batch size. Workers run with
glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``, recorded in the report): by
default glibc raises it as large blocks are freed, so the weights ONNX Runtime reads at load can
end up in heap memory that is never returned: the same process held 207 to 258 MiB after loading
the CIFAR-10 UNet from run to run, and 199 MiB every time with the threshold fixed. Deployments can
set the same variable. The PyTorch baseline's worker does not get it: torch allocates activations
with malloc op by op, and a fixed threshold turns each into an mmap/munmap pair (10 DDIM steps of
the CIFAR-10 UNet at batch 1 took 1.9-2.3 s instead of 1.05-1.3 s).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .errors import DiffPruneError


WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class Case:
    """One thing to time in this process: ``run()`` makes one batch of images and returns
    ``(end_to_end_s, unet_s)``; ``run({"scheduler": ..., "steps": ...})`` with other sampler settings,
    where the case supports them (``runtime_case`` does)."""

    name: str
    run: Callable[[], tuple]
    info: dict = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def _stats(values):
    values = sorted(values)
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90)), "min": values[0],
            "mean": statistics.fmean(values)}


SETTLE_S = float(os.environ.get("DIFFPRUNE_SETTLE_S", "0.05"))


def measure(cases, batch: int, runs: int = 10, warmup: int = 1, progress=None, settle_s: float | None = None) -> dict:
    """Time every case ``runs`` times, interleaved, after ``warmup`` untimed rounds.

    Between two runs the parent waits ``settle_s`` (default 50 ms): the thread pools of ONNX Runtime and
    OpenVINO keep spinning for a while after a run returns, and a run of another process started in
    that window shares the cores with them. For runs of seconds (CIFAR-10 at 50 steps) it hardly
    matters; for runs of 10-50 ms it does: the digits model's 10 DDIM steps on OpenVINO, alternating
    with three other processes, measured 44-52 ms without the pause and 27 ms with it, and predictions
    from a probe (``diffprune select``) missed by 44 % (median) without it, 5 % with it.
    """
    import time

    settle_s = SETTLE_S if settle_s is None else settle_s
    if runs < 1:
        raise DiffPruneError(f"runs {runs} must be at least 1 (10 or more for a stable median).")
    for _ in range(warmup):
        for case in cases:
            case.run()
            time.sleep(settle_s)
    e2e = {c.name: [] for c in cases}
    unet = {c.name: [] for c in cases}
    parts = {c.name: {} for c in cases}  # pipelines: seconds per component, per run
    for k in range(runs):
        for case in cases:
            time.sleep(settle_s)
            total_s, unet_s, *more = case.run()
            e2e[case.name].append(total_s)
            unet[case.name].append(unet_s)
            for part, seconds in (more[0] if more else {}).items():
                parts[case.name].setdefault(part, []).append(seconds)
        if progress:
            progress(k + 1, runs)
    out = {}
    for case in cases:
        s = _stats(e2e[case.name])
        u = _stats(unet[case.name])
        b = case.info.get("batch", batch)
        out[case.name] = {
            **case.info, "batch": b, "runs": runs,
            "e2e_ms": {k: v * 1e3 for k, v in s.items()},
            "unet_ms": {k: v * 1e3 for k, v in u.items()},
            "e2e_ms_runs": [round(v * 1e3, 3) for v in e2e[case.name]],  # in run order, to study drift
            "images_per_s": b / s["median"],
            "sampler_share": max(0.0, 1 - u["median"] / s["median"]),
        }
        if parts[case.name]:
            out[case.name]["parts_ms"] = {part: statistics.median(v) * 1e3 for part, v in parts[case.name].items()}
    return out


def runtime_case(name, runner, scheduler_name: str, steps: int, batch: int, info=None, cache_interval: int = 1) -> Case:
    """A case sampling with an open runner in this process (see ``worker_case`` for timing several); a run's
    settings may change the scheduler, steps and cache interval (step caching)."""
    from .sampler import Sampler
    from .schedulers import make_scheduler

    samplers = {}
    counter = iter(range(10**9))

    def run(settings=None):
        name = (settings or {}).get("scheduler", scheduler_name)
        interval = int((settings or {}).get("cache_interval", cache_interval))
        if (name, interval) not in samplers:
            samplers[name, interval] = Sampler(runner, make_scheduler(name, runner.scheduler_config), cache_interval=interval)
        sampler = samplers[name, interval]
        sampler.generate(batch, seed=next(counter), steps=int((settings or {}).get("steps", steps)), batch=batch)
        return sampler.last_timing["total_s"], sampler.last_timing["unet_s"]


    return Case(name, run, {"backend": runner.backend, **(info or {})})


PIPELINE_PARTS = ("text_encoder_s", "unet_s", "decoder_s", "sampler_s")


def pipeline_case(name, pipe, prompt: str, steps: int, batch: int, guidance=None, scheduler=None,
                  negative_prompt=None, info=None, cache_interval: int = 1) -> Case:
    """A case running an open :class:`~diffprune.runtime.pipeline.Pipeline`: ``batch`` prompts -> uint8 images,
    its run returning ``(e2e_s, unet_s, {component: seconds})``."""
    counter = iter(range(10**9))

    def run(settings=None):
        settings = settings or {}
        pipe.generate(prompt, n=batch, negative_prompt=negative_prompt, guidance=guidance,
                      steps=int(settings.get("steps", steps)), scheduler=settings.get("scheduler", scheduler),
                      seed=next(counter), batch=batch,
                      cache_interval=int(settings.get("cache_interval", cache_interval)))
        t = pipe.last_timing
        return t["total_s"], t["unet_s"], {k[:-2]: t[k] for k in PIPELINE_PARTS}

    unet = pipe.runners["unet"]
    return Case(name, run, {"backend": unet.backend, "guidance": pipe.guidance.get("scale") if guidance is None else guidance,
                            "kind": pipe.kind, **(info or {})})


class WorkerCase:
    """A case served by a child process: ``argv`` starts it, and it speaks ``serve``'s protocol.

    The child prints one JSON line when ready, answers each ``run`` line with a JSON line of timings,
    and on end of input prints its peak memory and exits. ``close()`` returns that memory record.
    ``env`` adds to the parent's environment (default ``WORKER_ENV``; ``{}`` for none).
    """

    def __init__(self, name: str, argv: list, info=None, env: dict | None = None):
        self.name = name
        self.info = dict(info or {})
        self.memory = None
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**os.environ, **(WORKER_ENV if env is None else env)})
        ready = self._read()
        self.info.update(ready.get("info", {}))
        self.baseline_mib = ready.get("baseline_mib")

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read().strip().splitlines()
            self._proc.wait()
            raise DiffPruneError(f"The benchmark process for {self.name!r} stopped: "
                                 f"{err[-1] if err else 'no message'} (exit status {self._proc.returncode}).")
        return json.loads(line)

    def run(self, settings: dict | None = None):
        self._proc.stdin.write("run" + (" " + json.dumps(settings) if settings else "") + "\n")
        self._proc.stdin.flush()
        reply = self._read()
        if "parts" in reply:
            return reply["e2e_s"], reply["unet_s"], reply["parts"]
        return reply["e2e_s"], reply["unet_s"]

    def close(self) -> dict | None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                end = self._read()
                self.memory = {"peak_mib": end["peak_mib"], "baseline_mib": self.baseline_mib,
                               "model_mib": end["peak_mib"] - self.baseline_mib}
            finally:
                self._proc.wait()
                self._proc.stdout.close()
                self._proc.stderr.close()
        return self.memory


def worker_case(name, artifact, backend: str, scheduler: str | None, steps: int, batch: int, threads=None,
                info=None, prompt: str | None = None, guidance: float | None = None,
                cache_interval: int = 1) -> WorkerCase:
    """An exported model (ONNX folder or TensorRT engine) sampling in its own process; a pipeline export
    (pipeline.json) generating ``batch`` images of ``prompt`` (scheduler None: the pipeline's own)."""
    argv = [sys.executable, "-m", "diffprune.runtime.bench", "--serve", str(artifact), "--backend", backend,
            "--batch", str(batch), "--steps", str(steps)]
    if scheduler:
        argv += ["--scheduler", scheduler]
    if threads:
        argv += ["--threads", str(threads)]
    if prompt is not None:
        argv += ["--prompt", prompt]
    if guidance is not None:
        argv += ["--guidance", str(guidance)]
    if cache_interval != 1:
        argv += ["--cache-interval", str(cache_interval)]
    return WorkerCase(name, argv, info)


class SettingCase:
    """One sampler setting (scheduler, steps) of a model served by a ``WorkerCase``: several of these can
    share one process, so a grid of settings is timed without loading the model again for each."""

    def __init__(self, name: str, worker: WorkerCase, settings: dict, batch: int):
        self.name, self.worker, self.settings = name, worker, dict(settings)
        self.info = {**worker.info, **self.settings, "batch": batch}

    def run(self):
        return self.worker.run(self.settings)

    def close(self):
        return None  # the worker is closed by whoever opened it


class _NullRunner:
    """Stands in for a model in ``sampler_seconds``: returns zeros, costs nothing."""

    backend = "none"

    def __init__(self, in_channels: int, sample_size, batch: int, scheduler_config: dict):
        self.in_channels, self.sample_size = in_channels, tuple(sample_size)
        self.batch_range, self.scheduler_config, self.seconds = (batch, batch), scheduler_config, 0.0

    def __call__(self, sample, timestep):
        return np.zeros_like(sample)


def sampler_seconds(scheduler_name: str, scheduler_config: dict, in_channels: int, sample_size, batch: int,
                    steps: int, repeats: int = 5) -> float:
    """Median seconds the sampler itself takes for one batch at ``steps`` (noise, scheduler steps, checks,
    uint8 conversion), with a model that costs nothing: the part of end-to-end latency that does not
    depend on the model, measured in this process."""
    from .sampler import Sampler
    from .schedulers import make_scheduler

    sampler = Sampler(_NullRunner(in_channels, sample_size, batch, scheduler_config),
                      make_scheduler(scheduler_name, scheduler_config))
    times = []
    for k in range(repeats + 1):  # the first run warms numpy's caches and is dropped
        sampler.generate(batch, seed=k, steps=steps, batch=batch)
        times.append(sampler.last_timing["total_s"])
    return statistics.median(times[1:])


def serve(make_case: Callable[[], Case], stdin=None, stdout=None) -> None:
    """The child's side of ``WorkerCase``: build the case (imports and model load), then serve runs."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def say(record):
        stdout.write(json.dumps(record) + "\n")
        stdout.flush()

    baseline = rss_peak_mib()
    case = make_case()
    say({"ready": True, "baseline_mib": baseline, "info": case.info})
    for line in stdin:
        command, _, settings = line.strip().partition(" ")
        if command == "run":
            total_s, unet_s, *parts = case.run(json.loads(settings)) if settings else case.run()
            say({"e2e_s": total_s, "unet_s": unet_s, **({"parts": parts[0]} if parts else {})})
    case.close()
    say({"peak_mib": rss_peak_mib()})


def rss_peak_mib() -> float:
    """This process's peak resident memory. On Linux, VmHWM belongs to the process image, while
    ru_maxrss survives exec and would report the parent's peak (a torch process's, here)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; macOS reports bytes


def _runtime_worker(artifact, backend, batch, steps, scheduler, threads, prompt=None, guidance=None, cache_interval=1):
    from .pipeline import Pipeline, is_pipeline
    from .runners import open_runner, parse_backend, resolve_backend

    backend = resolve_backend(backend, artifact, threads)
    name, _, _ = parse_backend(backend)
    # The backend's import belongs to the baseline memory, not to the model.
    if name.startswith("ort"):
        from .runners.onnxruntime import import_onnxruntime

        import_onnxruntime()
    elif name == "openvino":
        from .runners.openvino import import_openvino

        import_openvino()

    def make_pipeline_case():
        pipe = Pipeline(artifact, backend, threads=threads).open()
        case = pipeline_case(os.path.basename(str(artifact)), pipe, prompt or "a photo of an astronaut riding a horse",
                             steps, batch, guidance=guidance, scheduler=scheduler, cache_interval=cache_interval,
                             info={"threads": threads, **getattr(pipe.runners["unet"], "info", {})})
        return replace(case, close=pipe.close)

    def make_case():
        pinned = None if name == "trt" else batch  # TensorRT engines keep their profile
        runner = open_runner(artifact, backend, threads=threads, batch=pinned).open()
        case = runtime_case(os.path.basename(str(artifact)), runner, scheduler or "ddim", steps, batch,
                            info={"threads": threads, **getattr(runner, "info", {})}, cache_interval=cache_interval)
        return replace(case, close=runner.close)

    serve(make_pipeline_case if is_pipeline(artifact) else make_case)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="internal: serve timed runs of one model to `diffprune bench`")
    parser.add_argument("--serve", required=True, metavar="ARTIFACT")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default=None, help="default ddim; pipelines: their own")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt", default=None, help="pipelines: the prompt of every image")
    parser.add_argument("--guidance", type=float, default=None, help="pipelines: guidance scale (default theirs)")
    parser.add_argument("--cache-interval", type=int, default=1, help="step caching: full UNet every N-th step")
    a = parser.parse_args()
    try:
        _runtime_worker(a.serve, a.backend, a.batch, a.steps, a.scheduler, a.threads, a.prompt, a.guidance,
                        a.cache_interval)
    except DiffPruneError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
