"""End-to-end latency: noise -> uint8 images, scheduler and post-processing included.

Models are measured interleaved (A B A B ...) in one process so machine drift hits all alike; the
UNet's own share comes from the runner's timer. Peak resident memory is measured per model in a
fresh process (``python -m diffprune.runtime.bench --memory ...``), because one process holding
every model would report their sum.
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import DiffPruneError


@dataclass
class Case:
    """One thing to time: ``run()`` makes one batch of images and returns the seconds spent in the UNet."""

    name: str
    run: Callable[[], float]
    info: dict = field(default_factory=dict)


def _stats(values):
    values = sorted(values)
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90)), "min": values[0],
            "mean": statistics.fmean(values)}


def measure(cases, batch: int, runs: int = 10, warmup: int = 1, progress=None) -> dict:
    """Time every case ``runs`` times, interleaved, after ``warmup`` untimed rounds."""
    if runs < 1:
        raise DiffPruneError(f"runs {runs} must be at least 1 (10 or more for a stable median).")
    for _ in range(warmup):
        for case in cases:
            case.run()
    e2e = {c.name: [] for c in cases}
    unet = {c.name: [] for c in cases}
    for k in range(runs):
        for case in cases:
            started = time.perf_counter()
            unet_s = case.run()
            e2e[case.name].append(time.perf_counter() - started)
            unet[case.name].append(unet_s)
        if progress:
            progress(k + 1, runs)
    out = {}
    for case in cases:
        s = _stats(e2e[case.name])
        u = _stats(unet[case.name])
        out[case.name] = {
            **case.info, "batch": batch, "runs": runs,
            "e2e_ms": {k: v * 1e3 for k, v in s.items()},
            "unet_ms": {k: v * 1e3 for k, v in u.items()},
            "images_per_s": batch / s["median"],
            "sampler_share": max(0.0, 1 - u["median"] / s["median"]),
        }
    return out


def runtime_case(name, runner, scheduler_name: str, steps: int, batch: int, info=None) -> Case:
    from .sampler import Sampler
    from .schedulers import make_scheduler

    sampler = Sampler(runner, make_scheduler(scheduler_name, runner.scheduler_config))
    counter = iter(range(10**9))

    def run():
        sampler.generate(batch, seed=next(counter), steps=steps, batch=batch)
        return sampler.last_timing["unet_s"]

    return Case(name, run, {"backend": runner.backend, **(info or {})})


def peak_memory(artifact, backend: str, batch: int, steps: int = 2, scheduler: str = "ddim") -> dict:
    """Peak resident memory of a fresh process that loads ``artifact`` and samples one batch (MiB),
    and the same process's peak before loading the model (numpy and the backend imported)."""
    cmd = [sys.executable, "-m", "diffprune.runtime.bench", "--memory", str(artifact), "--backend", backend,
           "--batch", str(batch), "--steps", str(steps), "--scheduler", scheduler]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DiffPruneError(f"Measuring memory for {artifact} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_peak_mib() -> float:
    """This process's peak resident memory. On Linux, VmHWM belongs to the process image, while
    ru_maxrss survives exec and would report the parent's peak (a torch process's, here)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; macOS reports bytes


def _memory_child(artifact, backend, batch, steps, scheduler):
    from .runners import open_runner
    from .runners.onnxruntime import import_onnxruntime

    if backend.startswith("ort"):
        import_onnxruntime()
    else:
        import tensorrt  # noqa: F401
    baseline = _rss_peak_mib()
    with open_runner(artifact, backend) as runner:
        runtime_case("m", runner, scheduler, steps, batch).run()
    print(json.dumps({"peak_mib": _rss_peak_mib(), "baseline_mib": baseline,
                      "model_mib": _rss_peak_mib() - baseline}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="internal: peak memory of one model in a fresh process")
    parser.add_argument("--memory", required=True)
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scheduler", default="ddim")
    a = parser.parse_args()
    _memory_child(a.memory, a.backend, a.batch, a.steps, a.scheduler)
