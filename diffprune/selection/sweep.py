"""The models a --sweep adds to a selection: the dense model pruned to a fraction of its MACs (or, with
--target-speedup, to a measured latency on the first backend: diffprune.latency), optionally fine-tuned, then
exported (each step kept in the work folder and reused by later runs).
"""

import time
from pathlib import Path

from ..evaluation.evaluate import as_artifact


def sweep_member(dense, fraction, work: Path, method, data, finetune_steps, calibration_images, max_timesteps,
                 batches, progress, log, latency=None, step_cache: int = 0) -> Path:
    """The export of ``dense`` pruned to keep ``fraction`` of its MACs (``work``/macs-FRACTION[-ftSTEPS]-onnx), or,
    with ``latency`` (a diffprune.latency.LatencyTarget), to its speedup on its backend
    (``work``/speedup-S-BACKEND-bB[-ftSTEPS]-onnx; ``fraction`` is then unused). ``step_cache``: export with the
    shallow graph of step caching too (``-cache-onnx``)."""
    from ..pruning.recipe import prune_source
    from ..sources.unet import require_unconditional

    name = f"macs-{fraction:g}" if latency is None else sweep_name(latency)
    folder = work / name
    if not folder.exists():
        started = time.perf_counter()
        pruned = prune_source(dense, method=method, target_macs=None if latency else fraction, data=data,
                              num_images=calibration_images, max_timesteps=max_timesteps, progress=progress, latency=latency,
                              check=lambda model: require_unconditional(model, "Selection (--sweep)"))
        pruned.save(folder)
        report = pruned.report
        log(f"pruned {name}: {report.macs_after / report.macs_before:.1%} of dense MACs in {time.perf_counter() - started:.0f} s"
            + (f"; {report.latency['measured_speedup']:.2f}x measured on {latency.backend}" if latency else ""))
    model_dir = folder
    if finetune_steps:
        model_dir = work / f"{name}-ft{finetune_steps}"
        if not model_dir.exists():
            from ..training.finetune import finetune

            finetune(folder, model_dir, data=data, steps=finetune_steps, batch_size=32,
                     warmup_steps=min(50, max(1, finetune_steps // 5)), ema_decay=0.995, teacher=str(dense),
                     kd_weight=1.0, checkpoint_every=0, progress=progress)
    return as_artifact(model_dir, work / f"{model_dir.name}{'-cache' if step_cache else ''}-onnx", batches, log,
                       step_cache=step_cache)


def sweep_name(latency) -> str:
    """The model name of a latency-targeted sweep member: speedup-S-BACKEND-bB (a folder name: no ':' or '@')."""
    backend = latency.backend.replace(":", "-").replace("@", "-")
    return f"speedup-{latency.speedup:g}-{backend}-b{latency.batch}"
