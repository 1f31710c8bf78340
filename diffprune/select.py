"""Latency-budgeted model selection: the best-quality model that meets a latency budget on the
machine and backend it will run on.

Candidates are model folders (exported here), ONNX exports or TensorRT engines, or a sweep of
pruning levels of the dense model (pruned, optionally fine-tuned, exported). Each is measured end
to end on the chosen backend and batch (each in its own process, runs alternating, like
`diffprune bench`) and scored by its consistency with the dense model (SSIM of images from the
same seeds). The choice is never silent: when nothing fits, the closest candidate and its excess
are reported and no model is picked.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import DiffPruneError


@dataclass
class Row:
    name: str
    latency_ms: float  # per image or per batch, as the budget is
    quality: float  # SSIM vs dense (higher is better)
    params: int | None = None
    macs: int | None = None
    artifact: str = ""
    psnr_db: float | None = None


def pareto(rows) -> list:
    """Names of rows no other row beats on both latency (lower) and quality (higher)."""
    front = []
    for r in rows:
        dominated = any((o.latency_ms <= r.latency_ms and o.quality >= r.quality) and
                        (o.latency_ms < r.latency_ms or o.quality > r.quality) for o in rows if o is not r)
        if not dominated:
            front.append(r.name)
    return front


def pick(rows, budget_ms: float) -> dict:
    """Choose the highest-quality row within ``budget_ms``; ties go to the faster, then the smaller model.

    Returns ``{"choice", "fits", "pareto", "closest", "over_by_ms", "message"}``; ``choice`` is None
    when nothing fits, and ``message`` then names the closest candidate and how far it is over.
    """
    if not rows:
        raise DiffPruneError("No candidates to choose from: give model folders, exports or --sweep fractions.")
    if not budget_ms > 0:
        raise DiffPruneError(f"budget {budget_ms} ms must be positive.")
    fits = [r for r in rows if r.latency_ms <= budget_ms]
    front = pareto(rows)
    if fits:
        best = sorted(fits, key=lambda r: (-round(r.quality, 9), r.latency_ms, r.params or 0, r.name))[0]
        return {"choice": best.name, "fits": [r.name for r in fits], "pareto": front, "closest": best.name,
                "over_by_ms": 0.0, "message": f"{best.name}: quality {best.quality:.4f} at {best.latency_ms:.1f} ms "
                                              f"(budget {budget_ms:g} ms)"}
    closest = min(rows, key=lambda r: r.latency_ms)
    over = closest.latency_ms - budget_ms
    return {"choice": None, "fits": [], "pareto": front, "closest": closest.name, "over_by_ms": over,
            "message": f"Nothing fits {budget_ms:g} ms: the fastest candidate, {closest.name}, takes "
                       f"{closest.latency_ms:.1f} ms ({over:.1f} ms, {over / budget_ms:.0%} over). Prune further "
                       "(a smaller --sweep fraction), use a faster backend or batch, or raise the budget."}


def table(rows, decision: dict, per: str) -> str:
    lines = [f"| model | latency ms / {per} | params (M) | MACs (M) | SSIM vs dense | PSNR dB | Pareto | choice |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.latency_ms):
        lines.append(f"| {r.name} | {r.latency_ms:.1f} | {(r.params or 0) / 1e6:.2f} | {(r.macs or 0) / 1e6:.1f} | "
                     f"{r.quality:.4f} | {r.psnr_db if r.psnr_db is None else round(r.psnr_db, 2)} | "
                     f"{'yes' if r.name in decision['pareto'] else ''} | {'<== chosen' if r.name == decision['choice'] else ''} |")
    return "\n".join(lines)


def plot(rows, decision, budget_ms, per, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        chosen = r.name == decision["choice"]
        ax.scatter(r.latency_ms, r.quality, s=80 if chosen else 40, marker="*" if chosen else "o",
                   color="tab:red" if chosen else "tab:blue")
        ax.annotate(r.name, (r.latency_ms, r.quality), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axvline(budget_ms, color="tab:gray", linestyle="--", label=f"budget {budget_ms:g} ms")
    ax.set_xlabel(f"end-to-end latency, ms per {per}")
    ax.set_ylabel("SSIM vs dense (same noise)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def select(dense, candidates=(), sweep=(), budget_ms: float = 100.0, per: str = "image", backend: str = "auto",
           batch: int = 1, steps: int = 50, n: int = 16, runs: int = 10, method: str = "diff-pruning",
           data: str = "builtin:digits", finetune_steps: int = 0, calibration_images: int = 64,
           max_timesteps: int | None = None, threads: int | None = None, out="select", overwrite: bool = False,
           progress: bool = True, log=print) -> dict:
    """Measure and score every candidate, pick the best within ``budget_ms``; write ``out``/select.{json,md,png}.

    ``backend``: any runtime backend spec, or auto (openvino where installed, else ort-cpu).
    """
    from .runtime.runners import resolve_backend

    backend = resolve_backend(backend)
    from ._io import atomic_dir, check_writable
    from .metrics import consistency
    from .runtime.artifact import describe
    from .runtime.bench import measure, worker_case
    from .runtime import Sampler, make_scheduler, open_runner

    if per not in ("image", "batch"):
        raise DiffPruneError(f"per {per!r} is unknown; allowed: image, batch.")
    for f in sweep:
        if not 0 < f < 1:
            raise DiffPruneError(f"sweep fraction {f} is out of range; give fractions of dense MACs kept, 0 < f < 1.")
    check_writable(out, overwrite)
    work = Path(str(out) + ".work")  # exports and sweep models, reusable across runs
    work.mkdir(parents=True, exist_ok=True)
    artifacts = {"dense": _as_artifact(dense, work / "dense-onnx", batch, log)}
    for c in candidates:
        artifacts[Path(c).name] = _as_artifact(c, work / f"{Path(c).name}-onnx", batch, log)
    for f in sweep:
        artifacts[f"macs-{f:g}"] = _sweep_member(dense, f, work, method, data, finetune_steps, calibration_images,
                                                 max_timesteps, batch, progress, log)
    runners = {}
    try:
        for name, path in artifacts.items():
            kind, _, _ = describe(path)
            runners[name] = open_runner(path, "trt" if kind == "tensorrt" else backend, threads=threads).open()
        # Quality: every candidate from the dense model's seeds.
        images = {}
        for name, runner in runners.items():
            sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
            images[name] = sampler.generate(n, seed=0, steps=steps, batch=min(batch, n))
    finally:
        for runner in runners.values():
            runner.close()
    # Latency: one process per model, runs alternating, like `diffprune bench`.
    cases = []
    try:
        for name, path in artifacts.items():
            cases.append(worker_case(name, path, runners[name].backend, "ddim", steps, batch, threads))
        timing = measure(cases, batch, runs=runs, warmup=1)
    finally:
        for case in cases:
            case.close()
    rows = []
    for name, runner in runners.items():
        meta = runner.meta
        q = consistency(images[name], images["dense"])
        latency = timing[name]["e2e_ms"]["median"] / (batch if per == "image" else 1)
        rows.append(Row(name, latency, q["ssim"], meta.get("params"), meta.get("macs"), str(artifacts[name]),
                        None if not np.isfinite(q["psnr_db"]) else q["psnr_db"]))
    decision = pick(rows, budget_ms)
    text = table(rows, decision, per)
    result = {"budget_ms": budget_ms, "per": per, "backend": backend, "batch": batch, "steps": steps, "n": n,
              "runs": runs, "rows": [asdict(r) for r in rows], **decision}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "select.json").write_text(json.dumps(result, indent=1))
        (tmp / "select.md").write_text(f"# Selection within {budget_ms:g} ms per {per} ({backend}, batch {batch}, "
                                       f"{steps} DDIM steps)\n\n{text}\n\n{decision['message']}\n")
        plot(rows, decision, budget_ms, per, tmp / "select.png")
    log(text)
    log(decision["message"])
    return result


def _as_artifact(src, export_dir: Path, batch: int, log) -> Path:
    """An ONNX export or engine folder for ``src``, exporting model sources (once; reused later)."""
    path = Path(str(src))
    if path.is_dir() and ((path / "model.json").is_file() or (path / "engine.json").is_file()):
        return path
    if not export_dir.exists():
        from .export import to_onnx

        log(f"exporting {src} -> {export_dir}")
        to_onnx(src, export_dir, batch=(1, max(batch, 8), max(batch, 16)))
    return export_dir


def _sweep_member(dense, fraction, work, method, data, finetune_steps, calibration_images, max_timesteps, batch,
                  progress, log) -> Path:
    from .checkpoint import save
    from .models import load_source
    from .pruning import prune

    name = f"macs-{fraction:g}"
    folder = work / name
    if not folder.exists():
        started = time.perf_counter()
        model, scheduler_config, _ = load_source(dense)
        pruned, report = prune(model, method=method, target_macs=fraction, data=data, num_images=calibration_images,
                               max_timesteps=max_timesteps, scheduler_config=scheduler_config, progress=progress)
        save(pruned, folder, info={"source": {"source": str(dense)}, "pruning": report.to_dict()},
             scheduler_config=scheduler_config)
        log(f"pruned {name}: {report.macs_after / report.macs_before:.1%} of dense MACs in {time.perf_counter() - started:.0f} s")
    model_dir = folder
    if finetune_steps:
        model_dir = work / f"{name}-ft{finetune_steps}"
        if not model_dir.exists():
            from .finetune import finetune

            finetune(folder, model_dir, data=data, steps=finetune_steps, batch_size=32,
                     warmup_steps=min(50, max(1, finetune_steps // 5)), ema_decay=0.995, teacher=str(dense),
                     kd_weight=1.0, checkpoint_every=0, progress=progress)
    return _as_artifact(model_dir, work / f"{model_dir.name}-onnx", batch, log)
