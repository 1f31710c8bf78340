"""`diffprune demo`: the whole pipeline on one page, offline, on a CPU in minutes.

prune (Diff-Pruning, half the MACs) -> fine-tune with distillation -> export both to validated ONNX
-> sample both with the torch-free runtime from the same seeds -> end-to-end latency (and the
PyTorch eager baseline) -> one table, a side-by-side grid and a JSON report.

Every stage leaves its artifact in the output folder (written atomically); a re-run reuses the
finished ones, so an interrupted demo continues where it stopped.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "builtin:digits-ddpm"


@dataclass
class DemoOptions:
    model: str = DEFAULT_MODEL
    data: str = "builtin:digits"
    target_macs: float = 0.5
    method: str = "diff-pruning"
    calibration_images: int = 16  # Diff-Pruning sums ~500 timesteps on this model: 16 images keep it ~2 min
    max_timesteps: int | None = None
    finetune_steps: int = 200
    finetune_batch: int = 32
    kd_weight: float = 1.0
    n: int = 16
    steps: int = 50
    bench_runs: int = 10
    bench_batches: tuple = (1, 16)
    threads: int | None = None
    seed: int = 0
    backend: str = "auto"  # openvino where installed, else ort-cpu


def _stage(name, path: Path, log, make):
    """Run ``make()`` unless ``path`` (an atomically written artifact) already exists."""
    if path.exists():
        log(f"[{name}] reusing {path}")
        return "reused"
    started = time.perf_counter()
    make()
    log(f"[{name}] done in {time.perf_counter() - started:.1f} s -> {path}")
    return round(time.perf_counter() - started, 1)


def run_demo(out="diffprune-demo", options: DemoOptions | None = None, progress: bool = True, log=print) -> dict:
    from .benchmark import run_bench
    from .checkpoint import read_info, save
    from .export import to_onnx
    from .finetune import finetune
    from .metrics import consistency
    from .models import load_source, require_unconditional
    from .pruning import prune
    from .runtime import Sampler, make_scheduler, open_runner
    from .runtime.image import grid, save_png
    from .runtime.runners import resolve_backend

    o = options or DemoOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = {}

    dense_dir = out / "dense"

    def make_dense():
        model, scheduler_config, source = load_source(o.model)
        require_unconditional(model, "The demo")
        info = read_info(source["source"]) if source.get("format") == "diffprune" else {"source": source}
        info = {k: v for k, v in info.items() if k not in ("widths", "params", "macs", "versions", "dtype", "format")}
        save(model, dense_dir, info=info, scheduler_config=scheduler_config)

    stages["dense"] = _stage("dense model", dense_dir, log, make_dense)

    pruned_dir = out / "pruned"

    def make_pruned():
        model, scheduler_config, _ = load_source(str(dense_dir))
        pruned, report = prune(model, method=o.method, target_macs=o.target_macs, data=o.data,
                               num_images=o.calibration_images, max_timesteps=o.max_timesteps,
                               scheduler_config=scheduler_config, seed=o.seed, progress=progress)
        t = report.timesteps_used
        if t:
            log(f"[prune] Diff-Pruning summed gradients over {len(t)} timesteps (t = {t[0]}..{t[-1]}) until the loss "
                f"fell below {report.thr} x its maximum")
        save(pruned, pruned_dir, info={"source": {"source": str(dense_dir)}, "pruning": report.to_dict()},
             scheduler_config=scheduler_config)

    stages["prune"] = _stage("prune", pruned_dir, log, make_pruned)

    tuned_dir = out / "finetuned"
    stages["finetune"] = _stage("fine-tune", tuned_dir, log, lambda: finetune(
        pruned_dir, tuned_dir, data=o.data, steps=o.finetune_steps, batch_size=o.finetune_batch, lr=2e-4,
        warmup_steps=min(50, max(1, o.finetune_steps // 5)), ema_decay=0.995, teacher=str(dense_dir),
        kd_weight=o.kd_weight, checkpoint_every=0, checkpoint_dir=out / "finetune.ckpt", seed=o.seed,
        device="auto", progress=progress))

    exports = {}
    for name, src in (("dense", dense_dir), ("pruned", tuned_dir)):
        exports[name] = out / f"{name}-onnx"
        stages[f"export-{name}"] = _stage(f"export {name}", exports[name], log, lambda s=src, d=exports[name]: to_onnx(
            s, d, batch=(1, 8, max(16, o.n, *o.bench_batches))))

    # Sampling both from the same seeds, torch-free, on the backend the latency is measured on.
    backend = resolve_backend(o.backend)
    images = {}
    for name, path in exports.items():
        with open_runner(path, backend, threads=o.threads) as runner:
            sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
            images[name] = sampler.generate(o.n, seed=o.seed, steps=o.steps)
    quality = consistency(images["pruned"], images["dense"])
    sheet = grid(np.concatenate([images["dense"], images["pruned"]]), rows=2)
    save_png(out / "grid.png", sheet)
    log(f"[sample] {o.n} images each from the same seeds -> {out / 'grid.png'} (top: dense, bottom: pruned)")

    bench_dir = out / "bench"
    bench_file = bench_dir / "bench.json"
    if bench_file.exists():
        bench = json.loads(bench_file.read_text())
        stages["bench"] = "reused"
        log(f"[bench] reusing {bench_dir}")
    else:
        from .benchmark import write_report

        started = time.perf_counter()
        bench = run_bench([exports["dense"], exports["pruned"]], backend=backend, batches=list(o.bench_batches), steps=o.steps,
                          runs=o.bench_runs, warmup=1, threads=o.threads, torch_baseline=str(dense_dir),
                          memory=True, progress=progress)
        write_report(bench, bench_dir, command="diffprune demo")
        bench = json.loads(bench_file.read_text())
        stages["bench"] = round(time.perf_counter() - started, 1)
        log(f"[bench] done -> {bench_dir}")
    dense_meta = json.loads((exports["dense"] / "model.json").read_text())
    pruned_meta = json.loads((exports["pruned"] / "model.json").read_text())
    pruning = json.loads((pruned_dir / "pruning.json").read_text())["pruning"]
    latency = {}
    for batch, rows in bench["batches"].items():
        dense_row, pruned_row = rows[exports["dense"].name], rows[exports["pruned"].name]
        torch_row = next((r for r in rows.values() if r["backend"].startswith("torch")), None)
        b = int(batch)
        latency[b] = {
            "dense_ms_per_image": dense_row["e2e_ms"]["median"] / b,
            "pruned_ms_per_image": pruned_row["e2e_ms"]["median"] / b,
            "torch_eager_dense_ms_per_image": torch_row["e2e_ms"]["median"] / b if torch_row else None,
            "speedup": dense_row["e2e_ms"]["median"] / pruned_row["e2e_ms"]["median"],
            "speedup_vs_torch_eager": torch_row["e2e_ms"]["median"] / pruned_row["e2e_ms"]["median"] if torch_row else None,
        }
    report = {
        "model": o.model, "output": str(out), "options": o.__dict__,
        "dense": {"params": dense_meta["params"], "macs": dense_meta["macs"]},
        "pruned": {"params": pruned_meta["params"], "macs": pruned_meta["macs"],
                   "ssim_vs_dense": quality["ssim"], "psnr_db_vs_dense": quality["psnr_db"],
                   "timesteps_used": len(pruning.get("timesteps_used", [])), "ratio": pruning["ratio"]},
        "latency": latency,
        "memory_mib": bench.get("memory"),
        "validation": {"dense": dense_meta["validation"]["max_abs_error"], "pruned": pruned_meta["validation"]["max_abs_error"]},
        "steps": o.steps, "scheduler": "ddim", "backend": backend, "stages": stages,
        "files": {"grid": "grid.png", "bench": "bench/bench.md", "pruned_model": "finetuned", "onnx": ["dense-onnx", "pruned-onnx"]},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    table = summary_table(report)
    (out / "summary.md").write_text(table + "\n")
    log(table)
    log(f"report: {out / 'report.json'}   grid: {out / 'grid.png'}")
    return report


def summary_table(r: dict) -> str:
    d, p = r["dense"], r["pruned"]
    lines = [f"{r['steps']} DDIM steps, end to end (noise -> uint8), ONNX Runtime CPU; SSIM over images from the same noise",
             "",
             "| model | batch | params | MACs | ms / image | speedup | SSIM vs dense |",
             "|---|---|---|---|---|---|---|"]
    for b, lat in sorted(r["latency"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| dense | {b} | {d['params'] / 1e6:.2f}M | {d['macs'] / 1e6:.0f}M | {lat['dense_ms_per_image']:.1f} | 1.00x | 1.000 |")
        lines.append(f"| pruned + fine-tuned | {b} | {p['params'] / 1e6:.2f}M | {p['macs'] / 1e6:.0f}M | "
                     f"{lat['pruned_ms_per_image']:.1f} | {lat['speedup']:.2f}x | {p['ssim_vs_dense']:.3f} |")
        if lat.get("torch_eager_dense_ms_per_image"):
            lines.append(f"| dense, diffusers PyTorch eager | {b} | {d['params'] / 1e6:.2f}M | {d['macs'] / 1e6:.0f}M | "
                         f"{lat['torch_eager_dense_ms_per_image']:.1f} | "
                         f"{lat['dense_ms_per_image'] / lat['torch_eager_dense_ms_per_image']:.2f}x | - |")
    return "\n".join(lines)
