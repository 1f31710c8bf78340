"""The measuring part of selection, which feeds selection/decide.py: quality by sampling (or reused from an
earlier select.json), latency probed once per model/backend/batch, and end-to-end verification.
"""

from pathlib import Path

import numpy as np

from ..errors import DiffPruneError
from .decide import LatencyModel


def sampler_costs(schedulers, steps, scheduler_config, in_channels, sample_size, batch) -> dict:
    """scheduler -> (fixed ms, ms per step) of the sampler alone, fitted at the grid's fewest and most steps."""
    from ..runtime.bench import sampler_seconds

    lo, hi = min(steps), max(steps)
    hi = hi if hi > lo else lo + 10
    out = {}
    for s in schedulers:
        t_lo = sampler_seconds(s, scheduler_config, in_channels, sample_size, batch, lo) * 1e3
        t_hi = sampler_seconds(s, scheduler_config, in_channels, sample_size, batch, hi) * 1e3
        per_step = max(0.0, (t_hi - t_lo) / (hi - lo))
        out[s] = (max(0.0, t_lo - lo * per_step), per_step)
    return out


def measure_quality(artifacts, pairs, schedulers, step_list, ref_setting, n, threads, features, fid_reference,
                    progress, log, intervals=(1,)) -> dict:
    """(model, backend, scheduler, steps, cache interval) -> {"ssim", "psnr_db"[, "fid"]} against the dense
    reference images (FID: against ``fid_reference`` where given)."""
    from tqdm import tqdm

    from .._io import quiet
    from ..evaluation.metrics import consistency, feature_statistics, frechet_distance
    from ..runtime import Sampler, make_scheduler, open_runner

    def images(runner, s, k, c=1):  # at the largest batch the export takes: a seed's image does not depend on it
        with Sampler(runner, make_scheduler(s, runner.scheduler_config), cache_interval=c) as sampler:
            return sampler.generate(n, seed=0, steps=k)

    ref_backend = pairs[0][1] if pairs[0][0] == "dense" else next(b for m, b in pairs if m == "dense")
    with open_runner(artifacts["dense"], ref_backend, threads=threads) as runner:
        reference = images(runner, *ref_setting)
    feats = ref_stats = None
    if features:
        from ..evaluation.metrics import OnnxFeatures, reference_statistics

        feats = OnnxFeatures(features)
        ref_stats = (reference_statistics(fid_reference, feats, reference.shape[1:3], reference.shape[3])
                     if fid_reference else feature_statistics(feats(reference)))
    out = {}
    bar = tqdm(total=len(pairs) * len(schedulers) * sum(step_list) * len(intervals), unit="step", desc="quality",
               disable=quiet(progress))
    for m, b in pairs:
        with open_runner(artifacts[m], b, threads=threads) as runner:
            for s, k, c in ((s, k, c) for s in schedulers for k in step_list for c in intervals):
                got = images(runner, s, k, c)
                q = consistency(got, reference)
                q["psnr_db"] = q["psnr_db"] if np.isfinite(q["psnr_db"]) else None
                if feats is not None:
                    q["fid"] = frechet_distance(*feature_statistics(feats(got)), *ref_stats)
                out[(m, b, s, k, c)] = q
                bar.update(k)
    bar.close()
    log(f"quality: {len(out)} configurations sampled against dense at {ref_setting[0]} x{ref_setting[1]} on {ref_backend}")
    return out


def reuse_quality(path, pairs, schedulers, step_list, intervals=(1,)) -> tuple:
    """Quality scores and reference setting from an earlier select.json, for every configuration needed."""
    from ..runtime.formats import read_json

    earlier = read_json(Path(path))
    if not isinstance(earlier, dict) or not isinstance(earlier.get("rows"), list):
        raise DiffPruneError(f"{str(path)!r} is not a select.json (no rows); give the one `diffprune select` wrote.")
    scores = {(r["model"], r["backend"], r["scheduler"], r["steps"], r.get("cache_interval", 1)): {
        "ssim": r.get("ssim", r["quality"]), "psnr_db": r.get("psnr_db"), "fid": r.get("fid")} for r in earlier["rows"]}
    needed = [(m, b, s, k, c) for m, b in pairs for s in schedulers for k in step_list for c in intervals]
    gone = [key for key in needed if key not in scores]
    if gone:
        have = sorted({key[0] for key in scores})
        raise DiffPruneError(f"{str(path)!r} has no quality score for {' · '.join(map(str, gone[0]))} ({len(gone)} of "
                             f"{len(needed)} configurations missing). It holds the models {', '.join(have)}: name the "
                             "candidates alike and keep the schedulers, steps and backends within its grid.")
    ref = earlier.get("reference", {})
    return {key: scores[key] for key in needed}, (ref.get("scheduler"), ref.get("steps")), earlier


def probe(artifacts, pairs, batches, schedulers, step_list, metas, probe_runs, threads, log, intervals=(1,)) -> tuple:
    """One process per (model, backend, batch), timed at a probe setting -> latency models, and the processes
    (kept open for the end-to-end verification; the caller closes them). With cache intervals above 1 each
    process is also timed at the largest, which gives its shallow UNet call."""
    from ..runtime.bench import SettingCase, measure, worker_case

    setting = (schedulers[0], min(10, max(step_list)))
    cached = max(intervals)
    processes, cases = {}, []
    try:
        for m, b in pairs:
            for bs in batches:
                worker = worker_case(f"{m} · {b} · b{bs}", artifacts[m], b, setting[0], setting[1], bs, threads)
                processes[(m, b, bs)] = worker
                cases.append(SettingCase(worker.name, worker, {"scheduler": setting[0], "steps": setting[1]}, bs))
                if cached > 1:
                    cases.append(SettingCase(worker.name + " · cached", worker, {
                        "scheduler": setting[0], "steps": setting[1], "cache_interval": cached}, bs))
        log(f"probing {len(cases)} model/backend/batch processes at {setting[0]} x{setting[1]}, {probe_runs} runs each")
        timing = measure(cases, batches[0], runs=probe_runs, warmup=2)
    except BaseException:
        for worker in processes.values():
            worker.close()
        raise
    latency = {}
    for (m, b, bs), worker in processes.items():
        t = timing[worker.name]
        meta = metas[m]
        size = meta.get("sample_size")
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        costs = sampler_costs(schedulers, step_list, meta.get("scheduler", {}), meta.get("in_channels"), size, bs)
        unet = t["unet_ms"]["median"] / setting[1]
        # What the probe spent outside the UNet calls and the sampler: input copies, per batch.
        other = t["e2e_ms"]["median"] - t["unet_ms"]["median"] - (costs[setting[0]][0] + setting[1] * costs[setting[0]][1])
        shallow = None
        if cached > 1:  # the cached probe's UNet time: its full calls at ``unet`` each, the rest shallow
            full = len(range(0, setting[1], cached))
            cached_unet = timing[worker.name + " · cached"]["unet_ms"]["median"]
            shallow = max(0.0, (cached_unet - full * unet) / max(1, setting[1] - full))
        latency.setdefault((m, b), {})[bs] = LatencyModel(unet, max(0.0, other), costs, shallow)
    return latency, processes


def verify(rows, processes, runs, per, progress):
    """Measure ``rows`` end to end in their model's process, alternating; sets measured_ms and latency_ms."""
    from ..runtime.bench import SettingCase, measure

    cases = [SettingCase(r.name, processes[(r.model, r.backend, r.batch)], {
        "scheduler": r.scheduler, "steps": r.steps, "cache_interval": r.cache_interval}, r.batch) for r in rows]
    timing = measure(cases, 1, runs=runs, warmup=1)
    for r in rows:
        r.measured_ms = timing[r.name]["e2e_ms"]["median"] / (r.batch if per == "image" else 1)
        r.latency_ms = r.measured_ms
