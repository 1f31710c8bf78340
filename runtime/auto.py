"""``--backend auto``: the fastest installed backend and precision whose images agree with float32's, measured
once per (artifact, host) and cached.

A fixed rule ("OpenVINO in its default precision") was the slowest choice on some CPUs: on a Xeon with bf16
units but no AMX, OpenVINO's default bf16 ran the CIFAR-10 UNet 1.5x slower than its float32 (issue 23). So:

  1. :func:`candidates` lists what can run the artifact here: ort-cpu, openvino@f32, openvino@bf16 and
     openvino@f16 where the CPU plugin reports those units, an OpenVINO GPU, ONNX Runtime's CUDA and TensorRT
     providers where installed, the native TensorRT runner for an engine folder.
  2. :func:`probe` samples a few DDIM steps from the same noise on each (timing every UNet call but the first,
     a warm-up, and calling a fast model again until a second is timed; the median counts) and compares the
     images with the float32 reference's (ort-cpu, or openvino@f32 for an OpenVINO IR): the mean absolute
     difference, in the images' [-1, 1] units.
  3. :func:`choose` is the decision, a function of those numbers alone: the fastest candidate whose images
     agree within ``tolerance``. Reduced precision is therefore chosen only where it is faster and still agrees.
  4. :func:`auto_choice` keeps the measurement in the cache folder (``$DIFFPRUNE_CACHE/auto/<key>.json``,
     format ``diffprune.auto-choice/1``), keyed by the artifact's content, the host's CPU model, the thread
     count, the installed backends' versions and the probe's settings: a re-export, another machine or an
     upgrade measures again; anything else reuses it.
"""

import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cache import cache_dir
from .errors import DiffPruneError
from .formats import AUTO_FORMAT, read_auto_choice
from .host import cpu_name as cpu_model

# Mean |image - float32 image| in [-1, 1] units after the probe's steps: 0.02 is 2.5 levels of 255. float32 on
# another backend differs by ~1e-6; a graph computed in a wrong precision or a broken kernel by far more.
TOLERANCE = 0.02
PROBE_STEPS = 6  # the first call warms up, the other five are timed (median)
# ... and fast models are called again on the last step's input until this much time is timed (at most
# PROBE_CALLS calls): five calls of a 10 ms UNet are too few to rank two backends 10 % apart on a shared VM.
PROBE_SECONDS = 1.0
PROBE_CALLS = 50
PROBE_BATCH = 8  # at most; the artifact's batch range clips it


@dataclass
class Trial:
    """One candidate's probe: ``ms`` the median UNet call at the probe's batch, ``diff`` the mean absolute
    difference of its images from the float32 reference's, ``error`` why it could not run (then no numbers)."""

    backend: str
    ms: float | None = None
    diff: float | None = None
    error: str | None = None
    precision: str | None = None  # what the backend says it ran (OpenVINO), where it says


def choose(trials, tolerance: float = TOLERANCE) -> tuple:
    """``(backend, reason)``: the fastest trial that ran and whose images agree within ``tolerance``.

    Equal times keep the earlier trial (candidates come in order of preference, float32 first). ``reason`` is one
    line naming every trial's time and why the faster ones were passed over."""
    trials = [t if isinstance(t, Trial) else Trial(**t) for t in trials]
    agreeing = [t for t in trials if t.error is None and t.ms is not None and t.diff is not None and t.diff <= tolerance]
    if not agreeing:
        raise DiffPruneError(
            "--backend auto found no backend that runs this artifact and agrees with float32: "
            + "; ".join(f"{t.backend}: {t.error or f'images differ by {t.diff:.3g}'}" for t in trials)
            + ". Name a backend with --backend (ort-cpu runs every ONNX export).")
    best = min(agreeing, key=lambda t: t.ms)
    others = []
    for t in trials:
        if t is best:
            continue
        if t.error is not None:
            others.append(f"{t.backend}: {t.error}")
        elif t.diff > tolerance:
            others.append(f"{t.backend} {t.ms:.1f} ms but its images differ by {t.diff:.3g} > {tolerance:g}")
        else:
            others.append(f"{t.backend} {t.ms:.1f} ms")
    reason = (f"{best.backend}{f' ({best.precision})' if best.precision else ''}: {best.ms:.1f} ms per UNet call, "
              f"the fastest of {len(agreeing)} agreeing with float32" + (f" ({'; '.join(others)})" if others else ""))
    return best.backend, reason


# -- what can run here ------------------------------------------------------------------------------------

def candidates(kind: str = "onnx") -> list:
    """Backend specs that can run an artifact of ``kind`` ("onnx", "openvino", "tensorrt") here, the float32
    reference first. Asks the installed packages; imports nothing heavier than them."""
    import importlib.util

    if kind == "tensorrt":
        return ["trt"]
    found = [] if kind == "openvino" else ["ort-cpu"]
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        core = ov.Core()
        found.append("openvino@f32")
        try:  # the CPU plugin's units: BF16 (AVX512_BF16, AMX), FP16 (AVX512_FP16, AMX-FP16)
            caps = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:
            caps = set()
        found += [f"openvino@{p}" for p, unit in (("bf16", "BF16"), ("f16", "FP16")) if unit in caps]
        if kind == "openvino":
            found.insert(1, "openvino")  # an INT8 IR runs in its own precision
        if any(d.startswith("GPU") for d in core.available_devices):
            found.append("openvino:GPU")
    if kind == "onnx" and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        found += [spec for spec, provider in (("ort-cuda", "CUDAExecutionProvider"),
                                              ("ort-trt", "TensorrtExecutionProvider")) if provider in providers]
    return found


def versions() -> dict:
    """The installed backends' versions (package metadata; nothing is imported)."""
    from importlib import metadata

    found = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def artifact_digest(folder, meta: dict) -> str:
    """sha256 of the artifact's description and the bytes of its model files (graph, external weights, IR)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in ("model.json", "engine.json", meta.get("file", "model.onnx"), meta.get("weights_file")):
        path = folder / name if name else None
        if path is None or not path.is_file():
            continue
        h.update(f"{name}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if name.endswith(".xml") and path.with_suffix(".bin").is_file():
            h.update(path.with_suffix(".bin").read_bytes())
    return h.hexdigest()


def cache_key(fields: dict) -> str:
    """The cache file's name: a hash of everything the choice depends on (see :func:`key_fields`)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def key_fields(digest: str, threads: int, batch: int, steps: int, tolerance: float, cpu: str | None = None,
               installed: dict | None = None) -> dict:
    return {"artifact_sha256": digest, "cpu": cpu if cpu is not None else cpu_model(), "threads": int(threads),
            "versions": installed if installed is not None else versions(), "batch": int(batch), "steps": int(steps),
            "tolerance": float(tolerance), "timed": [PROBE_SECONDS, PROBE_CALLS]}


# -- measuring ----------------------------------------------------------------------------------------------

def _conditioning(runner, batch: int, seed: int) -> dict:
    """Fixed inputs besides sample and timestep, from model.json's shapes: float ones drawn from ``seed``
    (the same on every backend), integer ones (class labels) zero; a dynamic dimension other than the batch is 8."""
    rng = np.random.default_rng([seed, 2])
    feeds = {}
    for name in runner.conditioning:
        spec = runner.inputs[name]
        shape = [batch] + [d if isinstance(d, int) else 8 for d in spec["shape"][1:]]
        dtype = np.dtype(spec.get("dtype", "float32"))
        feeds[name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype))
    return feeds


def sample_probe(runner, batch: int, steps: int = PROBE_STEPS, seed: int = 0, clock=time.perf_counter) -> tuple:
    """``(images (B, C, H, W) in [-1, 1], seconds of each UNet call)``: DDIM from seeded noise on ``runner``."""
    from .noise import initial_noise
    from .schedulers import make_scheduler

    scheduler = make_scheduler("ddim", runner.scheduler_config or {})
    scheduler.set_timesteps(steps)
    x = initial_noise((runner.in_channels, *runner.sample_size), range(batch), seed, scheduler.init_noise_sigma)
    cond = _conditioning(runner, batch, seed)
    seconds = []
    for t in scheduler.timesteps:
        started = clock()
        x_in, t_in = scheduler.scale_model_input(x, t), np.full((batch,), float(t), np.float32)
        eps = runner(x_in, t_in, **cond)
        seconds.append(clock() - started)
        x = scheduler.step(eps, t, x).prev_sample
    while sum(seconds[1:]) < PROBE_SECONDS and len(seconds) < PROBE_CALLS:  # more timings, same images
        started = clock()
        runner(x_in, t_in, **cond)
        seconds.append(clock() - started)
    return np.clip(x, -1.0, 1.0), seconds


def probe(artifact, specs, open_runner, threads: int | None = None, batch: int = PROBE_BATCH, steps: int = PROBE_STEPS,
          clock=time.perf_counter, progress=None) -> list:
    """One :class:`Trial` per backend spec in ``specs`` (the first is the float32 reference): sample ``steps``
    DDIM steps of ``batch`` images on each, time the calls after the first, compare the images with the
    reference's. ``open_runner(artifact, spec, threads=...)`` opens a runner (runtime/runners' own, which calls
    this module, so it is passed in; tests pass fake runners) and ``clock`` reads the time."""
    trials, reference = [], None
    for spec in specs:
        if progress:
            progress(spec)
        trial = Trial(spec)
        try:
            with open_runner(artifact, spec, threads=threads) as runner:
                lo, hi = runner.batch_range
                images, seconds = sample_probe(runner, max(lo, min(batch, hi)), steps, clock=clock)
                trial.precision = (getattr(runner, "info", None) or {}).get("precision")
        except DiffPruneError as e:
            trial.error = str(e).split(". ")[0]
        except Exception as e:  # a backend's own failure on this graph disqualifies it, and only it
            trial.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        else:
            timed = seconds[1:] or seconds
            trial.ms = 1000 * statistics.median(timed)
            if reference is None:
                reference = images
            trial.diff = float(np.abs(images - reference).mean()) if images.shape == reference.shape else float("inf")
        trials.append(trial)
    return trials


# -- the choice, cached -------------------------------------------------------------------------------------

def auto_choice(artifact, threads: int | None = None, batch: int | None = None, steps: int = PROBE_STEPS,
                tolerance: float = TOLERANCE, refresh: bool = False, specs=None, open_runner=None, measure=None,
                log=None) -> dict:
    """What ``auto`` means for ``artifact`` on this host: the cached choice, else one measured now and cached.

    Returns the record: ``chosen`` (a backend spec), ``reason`` (one line with the times), ``trials``, ``fields``
    (what the key hashes), ``cached`` (whether it came from the cache) and ``line`` (what the CLI prints).
    ``artifact``: an export folder, OpenVINO IR folder, engine folder or pipeline export (its UNet decides, as the
    component that runs every step). ``refresh`` measures again; ``specs`` replaces :func:`candidates`;
    ``open_runner`` is what :func:`probe` opens runners with (``diffprune.runtime.runners.choose_auto`` passes
    the runtime's); ``measure`` replaces :func:`probe` altogether (tests).
    """
    from .artifact import describe
    from .formats import is_pipeline, read_pipeline_json

    folder = Path(artifact)
    if is_pipeline(folder):
        folder = folder / read_pipeline_json(folder)["components"]["unet"]
    kind, folder, meta = describe(folder)
    threads = int(threads or usable_cpus())
    batches = meta.get("batch") or {}
    lo = int(batches.get("min", 1))
    batch = max(lo, min(int(batch or PROBE_BATCH), int(batches.get("max", lo))))
    fields = key_fields(artifact_digest(folder, meta), threads, batch, steps, tolerance)
    key = cache_key(fields)
    try:
        store = cache_dir("auto", create=True)
    except DiffPruneError:  # a read-only home: measure every time
        store = None
    if store is not None and not refresh:
        record = read_auto_choice(store / f"{key}.json")
        if record is not None and record.get("key") == key:
            line = f"auto -> {record['reason']} [measured {record.get('measured_at', '?')}, cached in {store}]"
            if log:
                log(line)
            return {**record, "cached": True, "line": line}
    specs = list(specs) if specs is not None else candidates(kind)
    if measure is None:
        if open_runner is None:
            raise DiffPruneError("auto_choice needs open_runner or measure; call diffprune.runtime.runners.choose_auto.")
        trials = probe(folder, specs, open_runner, threads=threads, batch=batch, steps=steps)
    else:
        trials = measure(folder, specs, threads=threads, batch=batch, steps=steps)
    chosen, reason = choose(trials, tolerance)
    record = {"format": AUTO_FORMAT, "key": key, "fields": fields, "artifact": str(Path(artifact).resolve()),
              "chosen": chosen, "reason": reason, "trials": [asdict(t) if isinstance(t, Trial) else dict(t) for t in trials],
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if store is not None:
        _write(store / f"{key}.json", record)
    line = f"auto -> {reason} [measured now: {steps} DDIM steps at batch {batch}, {threads} threads]"
    if log:
        log(line)
    return {**record, "cached": False, "line": line}


def _write(path: Path, record: dict) -> None:
    """Written to a temporary file and renamed; a cache that cannot be written is no error."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass


__all__ = ["TOLERANCE", "PROBE_STEPS", "PROBE_BATCH", "Trial", "choose", "candidates", "probe", "sample_probe",
           "auto_choice", "cache_key", "key_fields", "artifact_digest", "versions", "cpu_model", "usable_cpus"]
