"""Latency-budgeted selection over the whole deployment configuration: model (pruning level) x
scheduler x steps x backend x batch x cache interval (step caching, DeepCache). This module owns the orchestration, :func:`select`; the choices
are made in decide.py (pure), fed by measure.py, sweep.py adds pruned models, report.py writes the report.

1. Quality. Every model samples the same seeds with every scheduler and step count on every
   backend, scored against the dense model at a reference setting (default: DDIM, or the model's own
   deterministic scheduler, at 100 steps): SSIM and PSNR, and FID in a feature network's space when
   one is given. Sampling is cheap next to timing, so the whole grid is sampled.
2. Latency, predicted. Each (model, backend, batch) is served by a process of its own and timed once
   at a probe setting; that gives its UNet call time. The sampler's own cost for each scheduler and
   step count is timed with a model that costs nothing (numpy only). End to end, per batch:

       predicted(scheduler, steps) = steps x unet_call + sampler(scheduler, steps) + other

   where ``other`` is what the probe's model-side time outside the UNet calls adds (input copies).
3. Latency, measured. The predicted Pareto front (quality against latency), the choice for each
   budget and the two naive choices (dense with fewer steps; pruned at the default steps) are run end
   to end in those processes, alternating, as `diffprune bench` does. Choices are then made again
   with the measured latencies, and any newly chosen configuration that was not yet measured is
   measured, until every choice stands on a measurement. The prediction error is reported.

When nothing fits, the fastest measured configuration is named with its excess, and nothing is chosen.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

from ..evaluation.evaluate import as_artifact
from ..pruning.importance import DEFAULT_METHOD
from ..runtime.formats import DEPLOY_JSON
from .decide import (check_grid, check_options, check_settings, chosen_names, decide, first_to_measure, make_rows,
                     pareto, parse_reference, prediction_error, runnable_pairs)
from .measure import measure_quality, probe, reuse_quality, verify
from .report import deploy_record, plot, report
from .sweep import sweep_member


def select(dense, candidates=(), sweep=(), speedups=(), budget_ms=100.0, per: str = "image", backend="auto", batch=1,
           steps=50, scheduler="ddim", reference: str = "auto", n: int = 16, runs: int = 10, probe_runs: int = 5,
           features=None, method: str = DEFAULT_METHOD, data: str = "builtin:digits", finetune_steps: int = 0,
           calibration_images: int = 64, max_timesteps: int | None = None, threads: int | None = None,
           quality_from=None, fid_reference=None, rank: str = "ssim", out="select", overwrite: bool = False, progress: bool = True, log=print,
           cache_interval=1) -> dict:
    """Choose the configuration with the best quality within each budget; write ``out``/select.{json,md,png}
    and deploy.json (the choice for the first budget; one deploy-<budget>ms.json per budget when several).

    Every axis takes one value or a list: ``budget_ms``, ``backend`` (runtime backend specs, or auto),
    ``batch``, ``steps``, ``scheduler``. The first scheduler and backend, the most steps and the first
    batch are the "default setting" the naive choices keep. ``features``: an ONNX feature network; FID
    against the dense reference images is then reported beside SSIM (ranking stays on SSIM).
    ``fid_reference``: real images (folder, .npz, builtin:digits) or their statistics: FID is then against
    them instead of the dense reference images. ``rank``: "ssim" (default) or "fid" (needs ``features``).
    ``quality_from``: an earlier select.json whose quality scores are reused instead of sampling (matched by
    model name, backend, scheduler and steps): quality measured once, latency planned on each target machine.
    ``speedups``: like ``sweep``, but each model pruned to that measured speedup of one UNet call on the first
    backend at the first batch (diffprune.latency; the backend must be named, not auto).
    ``cache_interval``: step caching intervals (1 = off; above 1 every model is exported with its shallow graph,
    and a given export must have one).
    """
    from .._io import atomic_dir, check_writable
    from ..evaluation.benchmark import installed_versions

    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    budgets, schedulers, step_list, batches = as_list(budget_ms), as_list(scheduler), as_list(steps), as_list(batch)
    intervals = as_list(cache_interval)
    backends = check_grid(schedulers, step_list, as_list(backend), batches, budgets, per, n, runs, intervals)
    step_cache = int(max(intervals) > 1)
    cache_tag = "-cache" if step_cache else ""
    check_options(rank, features, quality_from, fid_reference, sweep)
    targets = []
    if speedups:
        from ..latency import LatencyTarget

        for s in speedups:
            target = LatencyTarget(backend=as_list(backend)[0], speedup=float(s), batch=int(batches[0]), threads=threads)
            target.check()
            targets.append(target)
    check_writable(out, overwrite)
    started = time.perf_counter()

    work = Path(str(out) + ".work")  # exports and sweep models, reusable across runs
    work.mkdir(parents=True, exist_ok=True)
    export_batches = (1, max(max(batches), 8), max(max(batches), 16))
    artifacts = {"dense": as_artifact(dense, work / f"dense{cache_tag}-onnx", export_batches, log, step_cache)}
    auto = None
    if "auto" in backends:  # measured on the dense export, cached per artifact and host (runtime/auto.py)
        from ..runtime.runners import choose_auto

        auto = choose_auto(artifacts["dense"], threads=threads, log=log)
        backends = list(dict.fromkeys(auto["chosen"] if b == "auto" else b for b in backends))
    default = {"scheduler": schedulers[0], "steps": max(step_list), "backend": backends[0], "batch": batches[0]}
    for c in candidates:
        artifacts[Path(c).name] = as_artifact(c, work / f"{Path(c).name}{cache_tag}-onnx", export_batches, log, step_cache)
    for f in sweep:
        artifacts[f"macs-{f:g}"] = sweep_member(dense, f, work, method, data, finetune_steps, calibration_images,
                                                max_timesteps, export_batches, progress, log, step_cache=step_cache)
    for target in targets:
        from .sweep import sweep_name

        artifacts[sweep_name(target)] = sweep_member(dense, None, work, method, data, finetune_steps, calibration_images,
                                                     max_timesteps, export_batches, progress, log, latency=target,
                                                     step_cache=step_cache)

    from ..runtime.artifact import describe

    kinds = {name: describe(path)[0] for name, path in artifacts.items()}
    # An engine's engine.json holds the model's spec under "model"; an export's model.json is the spec.
    metas = {name: (lambda d: d[2]["model"] if d[0] == "tensorrt" else d[2])(describe(path))
             for name, path in artifacts.items()}
    pairs = runnable_pairs(kinds, backends)
    ref_setting = parse_reference(reference, metas["dense"].get("scheduler", {}))
    check_settings(schedulers, step_list + [ref_setting[1]], metas["dense"].get("scheduler", {}))

    mark = time.perf_counter()
    timing = {"models_s": mark - started}  # exports, and the sweep's pruning and fine-tuning
    if quality_from:
        quality, ref_setting, earlier = reuse_quality(quality_from, pairs, schedulers, step_list, intervals)
        n, features, fid_reference = earlier.get("n", n), earlier.get("features"), earlier.get("fid_reference")
    else:
        quality = measure_quality(artifacts, pairs, schedulers, step_list, ref_setting, n, threads, features,
                                  fid_reference, progress, log, intervals)
    timing["quality_s"], mark = time.perf_counter() - mark, time.perf_counter()
    latency, processes = probe(artifacts, pairs, batches, schedulers, step_list, metas, probe_runs, threads, log,
                               intervals)
    timing["probe_s"], mark = time.perf_counter() - mark, time.perf_counter()
    try:
        rows = make_rows(quality, latency, schedulers, step_list, per, rank, metas, artifacts, quality_from, intervals)
        by_name = {r.name: r for r in rows}
        to_measure = first_to_measure(rows, budgets, default)
        rounds = 0
        while to_measure:
            rounds += 1
            log(f"measuring {len(to_measure)} configurations end to end (round {rounds})")
            verify([by_name[name] for name in sorted(to_measure)], processes, runs, per, progress)
            to_measure = {name for name in chosen_names(decide(rows, budgets, default)) if not by_name[name].measured}
    finally:
        for worker in processes.values():
            worker.close()
    timing["verify_s"] = time.perf_counter() - mark
    measured = [r for r in rows if r.measured]
    decisions = decide(rows, budgets, default)
    result = {
        "budgets_ms": budgets, "per": per, "backends": backends, "batches": batches, "steps": step_list,
        "schedulers": schedulers, "cache_intervals": intervals, "reference": {"model": "dense", "backend": backends[0], "scheduler": ref_setting[0],
                                                "steps": ref_setting[1]},
        "quality_from": str(quality_from) if quality_from else None, "rank": rank,
        "fid_reference": str(fid_reference) if fid_reference else None, "default": default, "n": n, "runs": runs, "probe_runs": probe_runs, "features": str(features) if features else None,
        "rows": [asdict(r) for r in rows], "pareto": pareto(rows), "pareto_measured": pareto(measured),
        "decisions": decisions, "verification_rounds": rounds,
        "auto": {k: auto[k] for k in ("chosen", "reason", "trials", "cached")} if auto else None,
        "prediction_error": prediction_error(measured),
        "seconds": time.perf_counter() - started, "timing": timing, "versions": installed_versions(),
        "latency_model": {f"{m} · {b} · b{bs}": asdict(lm) for (m, b), model in latency.items() for bs, lm in model.items()},
    }
    first = decisions[f"{budgets[0]:g}"]["joint"]
    result.update(first)  # choice, fits, closest, over_by_ms, message of the first budget, as before
    text = report(result, rows)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "select.json").write_text(json.dumps(result, indent=1))
        (tmp / "select.md").write_text(text)
        plot(rows, decisions, budgets, per, tmp / "select.png", rank)
        for budget in budgets:
            choice = decisions[f"{budget:g}"]["joint"]["choice"]
            if choice:
                record = deploy_record(by_name[choice], budget, per, Path(out))
                names = [DEPLOY_JSON] if budget == budgets[0] else []
                names += [f"deploy-{budget:g}ms.json"] if len(budgets) > 1 else []
                for name in names:
                    (tmp / name).write_text(json.dumps(record, indent=1))
    log(text)
    return result
