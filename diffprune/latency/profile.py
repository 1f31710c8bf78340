"""Measuring for latency tables: a UNet's layers and groups, probe width configurations exported and timed on a
backend through the runtime's ``open_runner``, the fit (diffprune.latency.model), and the cache.

Three steps, each usable alone (a benchmark exports on a shared machine and times on a quiet one):
:func:`write_probes` exports the probes, :func:`time_probes` times them, :func:`fit_table` fits and writes the
table; :func:`profile` does all three, or returns the cached table when one was measured for the same
(model structure, backend, batch, threads, host, backend version).

Cache: ``$DIFFPRUNE_CACHE/latency/<key>.json`` (diffprune.runtime.cache; default ``~/.cache/diffprune``).
"""

import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .._io import quiet
from ..runtime.host import cpu_name
from ..errors import DiffPruneError
from ..runtime.formats import LATENCY_TABLE_FORMAT, read_latency_table
from . import model as latency_model

CACHE = "latency"  # subfolder of the runtime's cache
PROBES_JSON = "probes.json"
UNIFORM = (0.7, 0.45)  # kept fractions of the uniform probes (with dense: three points along the MAC curve)
STAGE_FRACTION = 0.5  # each stage's groups at half width, the others dense: separates the stages' costs
RANDOM_PROBES = 6  # random widths teach the fit what the stage probes do not (mixed widths across groups)
NARROW = 0.3  # one uniform probe near the knapsack's floor (MIN_FRACTION 0.25): without it the narrowest
# configurations are extrapolated, and ONNX Runtime at batch 1 ran them 12-15 % faster than predicted


def host() -> dict:
    return {"cpu": cpu_name(), "machine": platform.machine(), "cores": os.cpu_count()}


def backend_version(backend: str) -> str:
    from importlib import metadata

    name = backend.split(":")[0].split("@")[0]
    dist = "openvino" if name == "openvino" else "tensorrt" if name == "trt" else "onnxruntime"
    for candidate in (dist, f"{dist}-gpu"):
        try:
            return f"{candidate} {metadata.version(candidate)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{dist} (not installed)"


def structure_hash(model) -> str:
    """What a table depends on in the model: its class, config and every layer's width. The same for a model
    built from its config and for that model saved and loaded again (saving adds ``_class_name`` and
    ``_diffusers_version`` to the config; the class is always named, as a loaded model's config names it)."""
    from ..sources.structure import widths

    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config["_class_name"] = type(model).__name__
    text = json.dumps({"class": type(model).__name__, "config": config, "widths": widths(model)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(structure: str, backend: str, batch: int, threads, host_info: dict, version: str) -> str:
    """The table's cache key: model structure + backend (with its precision) + batch + threads + host + the
    backend package's version + the latency model's form (a table fitted by an older form is read, not reused
    from the cache). Pure."""
    text = json.dumps({"format": LATENCY_TABLE_FORMAT, "method": latency_model.METHOD, "structure": structure, "backend": backend, "batch": int(batch),
                       "threads": threads, "host": host_info, "version": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(key: str, create: bool = False) -> Path:
    from ..runtime.cache import cache_dir

    return cache_dir(CACHE, create=create) / f"{key}.json"


# -- the model's layers -----------------------------------------------------------------------------------

def layer_rows(planner, batch: int = 1, text_tokens: int | None = None) -> list:
    """One row per Conv2d/Linear layer of ``planner``'s dense model and per attention's two matrix products,
    counted at ``batch`` (diffprune.latency.model's ``layers``), with its channel counts and the groups that set
    parts of its input (``in_parts``, from the planner's dependency groups)."""
    import torch
    from diffusers.models.attention_processor import Attention

    from ..sources.unet import example_inputs

    model = planner.dense
    out_group, in_group = {}, {}
    for group, (outs, ins) in planner.layers.items():
        out_group.update({n: group for n in outs})
        in_group.update({n: group for n in ins})
    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: shapes.__setitem__(name, tuple(out.shape))))
    try:
        with torch.no_grad():
            model(**example_inputs(model, batch=batch, device=next(model.parameters()).device, text_tokens=text_tokens))
    finally:
        for h in hooks:
            h.remove()
    conv_stages = {s[2] * s[3]: f"{s[2]}x{s[3]}" for s in shapes.values() if len(s) == 4}

    def stage(shape):
        if len(shape) == 4:
            return f"{shape[2]}x{shape[3]}"
        tokens = shape[1] if len(shape) == 3 else 1
        return conv_stages.get(tokens, f"{tokens} tokens")

    rows = []
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        m = modules[name]
        elements = 1
        for d in shape:
            elements *= d
        conv = isinstance(m, torch.nn.Conv2d)
        per_output = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if conv else m.in_features
        parts = dict(sorted(planner.in_parts.get(name, {}).items()))
        rows.append({"name": name, "stage": stage(shape), "macs": elements * per_output, "elements": elements,
                     "out_group": out_group.get(name),
                     "in_group": max(parts, key=parts.get) if parts else in_group.get(name),  # the largest part
                     "out_channels": m.out_channels if conv else m.out_features,
                     "in_channels": m.in_channels // m.groups if conv else m.in_features, "in_parts": parts})
    for name, m in model.named_modules():
        if isinstance(m, Attention) and f"{name}.to_q" in shapes and f"{name}.to_k" in shapes:
            q, k = shapes[f"{name}.to_q"], shapes[f"{name}.to_k"]  # (B, Tq, inner), (B, Tk, inner)
            # Both products contract or produce the heads' width (inner // heads per head), which to_q's group sets.
            rows.append({"name": f"{name}.(qk,av)", "stage": stage(q), "macs": 2 * q[0] * q[1] * k[1] * q[2],
                         "elements": q[0] * m.heads * q[1] * k[1], "out_group": out_group.get(f"{name}.to_q"),
                         "in_group": None, "out_channels": q[2], "in_channels": q[2], "in_parts": {}})
    small = min(conv_stages.values(), key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1])) if conv_stages else None
    for r in rows:  # the time embedding's few MACs: charged at the smallest stage, too few to fit on their own
        if r["stage"] not in conv_stages.values() and small:
            r["stage"] = small
    return rows


def stages(rows: list) -> list:
    """The stages of ``rows``, largest resolution first."""
    def pixels(s):
        h, _, w = s.partition("x")
        return int(h) * int(w) if w else 0
    return sorted({r["stage"] for r in rows}, key=lambda s: -pixels(s))


def group_stage(rows: list) -> dict:
    """Group -> the stage where the layers whose output it sets have the most MACs."""
    cost = {}
    for r in rows:
        if r["out_group"] is not None:
            cost.setdefault(r["out_group"], {}).setdefault(r["stage"], 0)
            cost[r["out_group"]][r["stage"]] += r["macs"]
    return {g: max(by, key=by.get) for g, by in cost.items()}


def keep_at(steps: dict, fraction: dict) -> dict:
    """Group -> channels kept per channel-group nearest to ``fraction[group]`` on the group's lattice (whole
    steps, at least one step). Pure."""
    keep = {}
    for g, (_, per, step) in steps.items():
        f = fraction.get(g, 1.0)
        if f >= 1.0 or per <= step:
            keep[g] = per
        else:
            keep[g] = min(per, max(step, int(per * f / step + 0.5) * step))
    return keep


def probe_configs(steps: dict, rows: list, seed: int = 0, randoms: int = RANDOM_PROBES) -> list:
    """The width configurations a table is fitted to: dense, uniform at UNIFORM, each stage's groups at
    STAGE_FRACTION, and ``randoms`` random ones (a level per configuration, each group jittered around it). Pure."""
    configs = [("dense", {})]
    configs += [(f"uniform {f:g}", {g: f for g in steps}) for f in UNIFORM]
    where = group_stage(rows)
    for s in stages(rows):
        groups = [g for g in steps if where.get(g) == s]
        if groups:
            configs.append((f"stage {s} at {STAGE_FRACTION:g}", {g: STAGE_FRACTION for g in groups}))
    configs += random_configs(steps, seed, randoms)
    configs.append((f"uniform {NARROW:g}", {g: NARROW for g in steps}))  # last: earlier probes keep their numbers
    return [(label, keep_at(steps, f)) for label, f in configs]


def random_configs(steps: dict, seed: int, n: int) -> list:
    """``n`` random fraction configurations: a level in [0.3, 1] each, every group at level x U(0.7, 1.3). Pure."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        level = rng.uniform(0.3, 1.0)
        out.append((f"random {seed}.{i}", {g: min(1.0, max(0.1, level * rng.uniform(0.7, 1.3))) for g in steps}))
    return out


# -- exporting and timing ---------------------------------------------------------------------------------

def export_model(model, folder, batch: int, scheduler_config: dict, source: dict, text_tokens=None):
    """A timing export of ``model`` (not compared with torch: only timed) at ``folder``, batches 1..max(batch, 8)."""
    from ..export.onnx import export_unet

    export_unet(model, folder, scheduler_config, source, exporter="torchscript", batch=(1, batch, max(batch, 8)),
                validated=False, text_tokens=text_tokens, overwrite=True)
    return Path(folder)


def write_probes(planner, folder, configs: list, batch: int, scheduler_config: dict, source: dict,
                 text_tokens=None, progress: bool = True) -> Path:
    """Export each of ``configs`` ((label, keep) pairs) under ``folder``/probe-NN with ``probes.json`` listing them."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, (label, keep) in enumerate(tqdm(configs, desc="export probes", disable=quiet(progress))):
        path = folder / f"probe-{i:02d}"
        if not (path / "model.json").is_file():
            model = planner.apply(keep=keep)
            export_model(model, path, batch, scheduler_config, source, text_tokens)
            del model
        listed.append({"label": label, "keep": keep, "path": path.name})
    (folder / PROBES_JSON).write_text(json.dumps(listed, indent=1))
    return folder


def time_artifact(folder, backend: str, batch: int, threads=None, min_seconds: float = 1.5, min_runs: int = 5,
                  max_runs: int = 40, warmup: int = 2) -> tuple:
    """(median milliseconds of one UNet call at ``batch``, the runner's info) of the export at ``folder``."""
    import numpy as np

    from ..export.onnx import unet_feeds
    from ..runtime.runners import open_runner
    from dataclasses import fields

    from ..sources.conditioning import Conditioning

    meta = json.loads((Path(folder) / "model.json").read_text())
    rng = np.random.default_rng(0)
    h, w = meta["sample_size"]
    sample = rng.standard_normal((batch, meta["in_channels"], h, w)).astype(np.float32)
    timestep = np.full((batch,), 500.0, dtype=np.float32)
    extra = {}
    if meta.get("conditioning"):
        names = {f.name for f in fields(Conditioning)}
        cond = Conditioning(**{k: v for k, v in meta["conditioning"].items() if k in names})
        extra = unet_feeds(cond, (h, w))(batch, rng)
    with open_runner(folder, backend, threads=threads, batch=batch) as run:
        for _ in range(warmup):
            run(sample, timestep, **extra)
        times, started = [], time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - started < min_seconds):
            t = time.perf_counter()
            run(sample, timestep, **extra)
            times.append((time.perf_counter() - t) * 1e3)
        info = dict(getattr(run, "info", {}) or {})
    if backend.startswith("ort"):
        info.setdefault("precision", "f32")  # the export is float32 and ONNX Runtime's CPU/CUDA providers run it so
    return statistics.median(times), info


SHORT_CALL_MS = 200.0  # below it, a fresh session's timing scatters +-10-14 % (ONNX Runtime CPU, CIFAR-10 size, batch 1)


def time_probes(folder, backend: str, batch: int, threads=None, progress: bool = True, rounds: int | None = None,
                reference=None, every: int = 3) -> list:
    """The milliseconds of every probe under ``folder`` (written by :func:`write_probes`), in order, corrected for
    the machine's drift: a reference model (``reference``, default the folder's dense probe) is timed before every
    ``every``-th probe and after the last, each probe's time is divided by the reference's time interpolated to
    its moment, and the ratios (averaged over ``rounds`` passes) are multiplied by the reference's median time.
    A shared or virtual CPU drifts by 10-20 % over minutes (measured: the same dense CIFAR-10 call 64-71 ms within
    one pass), more than the differences between neighbouring probes; a ratio to a model timed seconds apart does
    not drift. Without a reference, each probe's fastest pass is kept. ``rounds`` None: 2 passes, 4 where the
    reference's call is under SHORT_CALL_MS (measured: 2 passes left ONNX Runtime CPU's batch-1 CIFAR-10 checks 4-8 %
    off at the median and up to 15 % off; 4 passes: 2.2 % and 7.6 %)."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    listed = json.loads((folder / PROBES_JSON).read_text())
    out = [dict(p) for p in listed]
    if reference is None:
        dense = next((p for p in listed if not p["keep"] or p["label"] == "dense"), None)
        reference = folder / dense["path"] if dense else None
    passes = []
    planned = rounds or 2
    bar = tqdm(total=len(listed) * planned, desc=f"time probes ({backend}, batch {batch})", disable=quiet(progress))
    done = 0
    while done < planned:
        done += 1
        samples, refs, moment = [], [], 0
        for i, probe in enumerate(out):
            if reference is not None and i % every == 0:
                refs.append((moment, time_artifact(reference, backend, batch, threads)[0]))
                moment += 1
            ms, info = time_artifact(folder / probe["path"], backend, batch, threads)
            samples.append((moment, ms))
            moment += 1
            probe["runner"] = info
            bar.update()
        if reference is not None:
            refs.append((moment, time_artifact(reference, backend, batch, threads)[0]))
        passes.append((samples, refs))
        if rounds is None and done == 2 and refs and statistics.median(ms for _, ms in refs) < SHORT_CALL_MS:
            planned = 4
            bar.total = len(listed) * planned
    bar.close()
    reference_ms = statistics.median([ms for _, refs in passes for _, ms in refs]) if reference is not None else None
    for probe, ms in zip(out, drift_corrected(passes)):
        probe["measured_ms"] = round(ms, 3)
        probe["reference_ms"] = reference_ms  # the scale of measured_ms: compare sets timed apart as ratios to it
    return out


def drift_corrected(passes: list) -> list:
    """Pure: per probe, milliseconds from ``passes`` (each ``(samples, refs)``: ``samples`` the probes' ``(moment,
    ms)`` in order, ``refs`` the reference's ``(moment, ms)``). With references: the mean over passes of the
    probe's ratio to the reference interpolated linearly at its moment, times the references' median; without:
    the fastest pass."""
    import numpy as np

    all_refs = [ms for _, refs in passes for _, ms in refs]
    if not all_refs:
        return [min(ms for ms in column) for column in zip(*[[ms for _, ms in samples] for samples, _ in passes])]
    ratios = []
    for samples, refs in passes:
        at, ms = np.array([m for m, _ in refs], dtype=float), np.array([r for _, r in refs], dtype=float)
        ratios.append([t / float(np.interp(moment, at, ms)) for moment, t in samples])
    return [float(np.mean(column)) * float(np.median(all_refs)) for column in zip(*ratios)]


def fit_table(rows: list, steps: dict, timed: list, *, key: str, backend: str, batch: int, threads, model_info: dict,
              resolution, seconds: float = 0.0) -> dict:
    """The latency table: the coefficients fitted to ``timed`` probes, with what it was measured on. Pure."""
    order = stages(rows)
    fracs = [latency_model.fractions(p["keep"], steps) for p in timed]
    measured = [p["measured_ms"] for p in timed]
    coefficients = latency_model.fit(rows, order, fracs, measured)
    table = {"format": LATENCY_TABLE_FORMAT, "key": key, "backend": backend, "batch": int(batch), "threads": threads,
             "resolution": list(resolution), "host": host(), "versions": {}, "model": model_info,
             "method": latency_model.METHOD,
             "layers": rows, "groups": {g: list(v[:2]) for g, v in steps.items()}, "coefficients": coefficients,
             "dense_ms": float(next(p["measured_ms"] for p in timed if not any(
                 p["keep"].get(g, v[1]) < v[1] for g, v in steps.items()))),
             "seconds": round(seconds, 1)}
    predicted = [latency_model.predict_ms(table, f) for f in fracs]
    table["probes"] = [{"label": p["label"], "measured_ms": p["measured_ms"], "predicted_ms": round(q, 3),
                        "precision": p.get("runner", {}).get("precision")} for p, q in zip(timed, predicted)]
    table["fit"] = latency_model.errors(predicted, measured)
    table["precision"] = next((p["precision"] for p in table["probes"] if p["precision"]), None)
    return table


def write_table(table: dict, out=None, overwrite: bool = False) -> Path:
    """Write ``table`` into the cache, and at ``out`` when given (atomically; not over a file without
    ``overwrite``). Returns where it was written (``out``, else the cache file)."""
    text = json.dumps(table, indent=1)
    targets = [cache_path(table["key"], create=True)]
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise DiffPruneError(f"{str(out)!r} exists; pass --overwrite (overwrite=True) to replace it, or choose "
                                 "another path.")
        targets.append(out)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return targets[-1]


def table_for(planner, backend: str, batch: int = 1, threads=None, scheduler_config=None, source=None,
              text_tokens=None, out=None, use_cache: bool = True, overwrite: bool = False, progress: bool = True,
              seed: int = 0) -> dict:
    """The latency table of ``planner``'s dense model on ``backend``: from the cache when there, else measured
    (probes exported to a temporary folder, timed, fitted) and cached."""
    from ..runtime.runners import check_available
    from ..sources.architectures import DEFAULT_SCHEDULER
    from ..sources.unet import sample_size, versions

    backend = check_available(backend)
    model = planner.dense
    structure = structure_hash(model)
    info = host()
    version = backend_version(backend)
    key = cache_key(structure, backend, batch, threads, info, version)
    cached = cache_path(key)
    if use_cache and cached.is_file():
        table = read_latency_table(cached)
        if out is not None:
            write_table(table, out, overwrite)
        return {**table, "cached": str(cached)}
    started = time.perf_counter()
    rows = layer_rows(planner, batch, text_tokens)
    steps = planner.steps()
    configs = probe_configs(steps, rows, seed)
    work = Path(tempfile.mkdtemp(prefix="diffprune-latency-"))
    try:
        write_probes(planner, work, configs, batch, scheduler_config or dict(DEFAULT_SCHEDULER), source or {},
                     text_tokens, progress)
        timed = time_probes(work, backend, batch, threads, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = fit_table(rows, steps, timed, key=key, backend=backend, batch=batch, threads=threads,
                      model_info={"structure": structure, "class": type(model).__name__, "source": source or {}},
                      resolution=sample_size(model), seconds=time.perf_counter() - started)
    table["versions"] = {**versions(), "backend": version}
    write_table(table, out, overwrite)
    return table


def planner_for(model, round_to: int = 8):
    """A planner over ``model``'s groups scored by weight magnitude (a table needs the groups, not the scores)."""
    from ..pruning.importance import CRITERIA
    from ..pruning.pruner import _Planner

    return _Planner(model.eval(), CRITERIA["magnitude"](thr=0.05), round_to, prune_heads=False)


def profile(src, backend: str, batch: int = 1, threads=None, out=None, use_cache: bool = True,
            overwrite: bool = False, progress: bool = True, device: str = "cpu") -> dict:
    """``diffprune profile``: the latency table of model source ``src`` (any source diffprune loads) on
    ``backend`` (ort-cpu, openvino[@precision], ort-cuda, ...) at ``batch``; written at ``out`` when given and
    cached (``$DIFFPRUNE_CACHE/latency``). Returns the table (a dict; ``read_latency_table`` reads the file)."""
    from ..sources.loader import load_source

    if not isinstance(batch, int) or batch < 1:
        raise DiffPruneError(f"batch {batch!r} is invalid; allowed: a whole number >= 1.")
    if out is not None and Path(out).exists() and not overwrite:
        raise DiffPruneError(f"{str(out)!r} exists; pass --overwrite to replace it, or choose another path.")
    model, scheduler_config, source = load_source(src, device=device)
    return table_for(planner_for(model), backend, batch, threads, scheduler_config, source, out=out,
                     use_cache=use_cache, overwrite=overwrite, progress=progress)


def check_table(table: dict, model, backend: str | None = None, batch: int | None = None) -> None:
    """Refuse a table measured for another model structure (or, when given, another backend or batch)."""
    structure = structure_hash(model)
    if table["model"].get("structure") != structure:
        raise DiffPruneError(
            f"The latency table (key {table['key']}) was measured for another model structure "
            f"({table['model'].get('structure')}; this model is {structure}). Profile this model: "
            "`diffprune profile SRC --backend B --out TABLE.json`, or leave --latency-table out.")
    for label, want, have in (("backend", backend, table["backend"]), ("batch", batch, table["batch"])):
        if want is not None and want != have:
            raise DiffPruneError(f"The latency table was measured with {label} {have}, not {want}; profile again with "
                                 f"--{label} {want}, or leave --latency-table out.")


def measure(model, backend: str, batch: int, threads=None, scheduler_config=None, source=None, text_tokens=None) -> tuple:
    """(median ms of one call of ``model`` on ``backend`` at ``batch``, runner info): exported to a temporary
    folder, timed, removed."""
    from ..sources.architectures import DEFAULT_SCHEDULER

    work = Path(tempfile.mkdtemp(prefix="diffprune-measure-"))
    try:
        export_model(model, work / "unet", batch, scheduler_config or dict(DEFAULT_SCHEDULER), source or {}, text_tokens)
        return time_artifact(work / "unet", backend, batch, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
