"""`diffprune demo`: the whole pipeline on one page, offline, on a CPU in minutes.

prune (the default criterion, magnitude; half the MACs) -> fine-tune with distillation -> export both to validated ONNX
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

from .pruning.importance import DEFAULT_METHOD

DEFAULT_MODEL = "builtin:digits-ddpm"


@dataclass
class DemoOptions:
    model: str = DEFAULT_MODEL
    data: str = "builtin:digits"
    target_macs: float = 0.5
    # Prune to this measured speedup of one UNet call (batch 1) on the demo's backend instead (diffprune.latency;
    # the latency table is measured once per host and backend and cached); None: prune to target_macs.
    target_speedup: float | None = None
    method: str = DEFAULT_METHOD
    calibration_images: int = 16  # Diff-Pruning sums ~500 timesteps on this model: 16 images keep it ~2 min
    max_timesteps: int | None = None
    round_to: int = 16  # widths in OpenVINO's 16-channel blocks: 16/48/48 ran faster than 24/40/40 (benchmarks/README.md)
    finetune_steps: int = 1000  # 200 steps gave SSIM 0.62 vs dense, 1,000 gave 0.90 (benchmarks/README.md)
    finetune_batch: int = 32
    finetune_lr: float = 1e-3
    kd_weight: float = 10.0  # distillation dominates: the teacher's output is a low-variance target
    n: int = 64  # images per model for SSIM and the digits classifier; the grid shows the first `grid`
    grid: int = 16
    steps: int = 50
    bench_runs: int = 5  # timed runs per model and batch; the median and the paired ratio are reported
    bench_batches: tuple = (1, 16)  # the largest is the headline setting
    threads: int | None = None
    seed: int = 0
    backend: str = "auto"  # measured: the fastest backend here whose images agree with float32 (runtime/auto.py)


def _stage(name, path: Path, log, make, progress: bool = True):
    """Run ``make()`` unless ``path`` (an atomically written artifact) already exists. With stderr no terminal,
    a progress line at least every minute says the stage is alive (diffprune._io)."""
    from ._io import heartbeat

    if path.exists():
        log(f"[{name}] reusing {path}")
        return "reused"
    started = time.perf_counter()
    with heartbeat(f"demo: [{name}]", enabled=progress):
        make()
    log(f"[{name}] done in {time.perf_counter() - started:.1f} s -> {path}")
    return round(time.perf_counter() - started, 1)


def run_demo(out="diffprune-demo", options: DemoOptions | None = None, progress: bool = True, log=print) -> dict:
    from ._io import heartbeat
    from .evaluation.benchmark import run_bench
    from .sources.checkpoint import read_info, save
    from .export import to_onnx
    from .training.checkpoints import latest_checkpoint
    from .training.finetune import finetune
    from .evaluation.metrics import consistency
    from .sources.loader import load_source
    from .sources.unet import require_unconditional
    from .pruning.recipe import prune_source
    from .runtime import Sampler, make_scheduler, open_runner
    from .runtime.formats import read_json, read_model_json
    from .runtime.image import grid, save_png
    from .runtime.runners import resolve_backend

    from .threads import check_threads

    o = options or DemoOptions()
    check_threads(o.threads)  # before minutes of work
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

    stages["dense"] = _stage("dense model", dense_dir, log, make_dense, progress)
    exports = {name: out / f"{name}-onnx" for name in ("dense", "pruned")}
    export_batches = (1, 8, max(16, o.n, *o.bench_batches))
    stages["export-dense"] = _stage("export dense", exports["dense"], log, lambda: to_onnx(
        dense_dir, exports["dense"], batch=export_batches), progress)

    pruned_dir = out / "pruned"

    def make_pruned():
        latency = None
        if o.target_speedup:
            from .latency import LatencyTarget

            # auto: measured on the dense export (runtime/auto.py), so the latency is the one the demo runs on
            backend = resolve_backend(o.backend, exports["dense"], o.threads, log=log)
            latency = LatencyTarget(backend=backend, speedup=o.target_speedup, threads=o.threads)
        pruned = prune_source(str(dense_dir), method=o.method, target_macs=None if latency else o.target_macs,
                              data=o.data, num_images=o.calibration_images, max_timesteps=o.max_timesteps,
                              round_to=o.round_to, seed=o.seed, progress=progress, latency=latency, threads=o.threads)
        if latency:
            lat = pruned.report.latency
            log(f"[prune] to {o.target_speedup:g}x on {latency.backend}: dense {lat['dense_ms']:.2f} ms, predicted "
                f"{lat['predicted_ms']:.2f} ms, measured {lat['measured_ms']:.2f} ms ({lat['measured_speedup']:.2f}x)")
        t = pruned.report.timesteps_used
        if t:
            log(f"[prune] Diff-Pruning summed gradients over {len(t)} timesteps (t = {t[0]}..{t[-1]}) until the loss "
                f"fell below {pruned.report.thr} x its maximum")
        pruned.save(pruned_dir)

    stages["prune"] = _stage("prune", pruned_dir, log, make_pruned, progress)

    tuned_dir = out / "finetuned"
    ckpt = out / "finetune.ckpt"  # a time-based checkpoint every 10 minutes: a stopped demo continues from it
    stages["finetune"] = _stage("fine-tune", tuned_dir, log, lambda: finetune(
        pruned_dir, tuned_dir, data=o.data, steps=o.finetune_steps, batch_size=o.finetune_batch, lr=o.finetune_lr,
        warmup_steps=min(50, max(1, o.finetune_steps // 5)), ema_decay=0.995, teacher=str(dense_dir),
        kd_weight=o.kd_weight, checkpoint_every=0, checkpoint_dir=ckpt, seed=o.seed,
        resume=latest_checkpoint(ckpt) is not None, device="auto", progress=progress, threads=o.threads), progress)

    stages["export-pruned"] = _stage("export pruned", exports["pruned"], log, lambda: to_onnx(
        tuned_dir, exports["pruned"], batch=export_batches), progress)

    # Sampling both from the same seeds, torch-free, on the backend the latency is measured on.
    backend = resolve_backend(o.backend, exports["pruned"], o.threads, log=log)  # auto: measured on the pruned export
    images = {}
    for name, path in exports.items():
        with heartbeat(f"demo: [sample {name}]", enabled=progress), open_runner(path, backend, threads=o.threads) as runner:
            sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
            images[name] = sampler.generate(o.n, seed=o.seed, steps=o.steps)
    quality = consistency(images["pruned"], images["dense"])
    shown = min(o.grid, o.n)
    sheet = grid(np.concatenate([images["dense"][:shown], images["pruned"][:shown]]), rows=2)
    save_png(out / "grid.png", sheet)
    log(f"[sample] {o.n} images each from the same seeds -> {out / 'grid.png'} (top: dense, bottom: pruned; first {shown})")
    digits = _digit_judgement(images, o.data)

    bench_dir = out / "bench"
    bench_file = bench_dir / "bench.json"
    if bench_file.exists():
        bench = read_json(bench_file, f"delete {str(bench_dir)!r} and run the demo again")
        stages["bench"] = "reused"
        log(f"[bench] reusing {bench_dir}")
    else:
        from .evaluation.benchmark import write_report

        started = time.perf_counter()
        with heartbeat("demo: [bench]", enabled=progress):
            bench = run_bench([exports["dense"], exports["pruned"]], backend=backend, batches=list(o.bench_batches),
                              steps=o.steps, runs=o.bench_runs, warmup=1, threads=o.threads,
                              torch_baseline=str(dense_dir), memory=True, progress=progress)
        write_report(bench, bench_dir, command="diffprune demo")
        bench = read_json(bench_file)
        stages["bench"] = round(time.perf_counter() - started, 1)
        log(f"[bench] done -> {bench_dir}")
    dense_meta = read_model_json(exports["dense"])
    pruned_meta = read_model_json(exports["pruned"])
    pruning = read_info(pruned_dir)["pruning"]
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
                   "ssim_vs_dense": quality["ssim"], "psnr_db_vs_dense": quality["psnr_db"], "n": quality["n"],
                   "method": pruning.get("method", o.method), "timesteps_used": len(pruning.get("timesteps_used", [])),
                   "ratio": pruning["ratio"]},
        "digits": digits,
        "latency": latency,
        "headline_batch": max(int(b) for b in latency),
        "memory_mib": bench.get("memory"),
        "validation": {"dense": dense_meta["validation"]["max_abs_error"], "pruned": pruned_meta["validation"]["max_abs_error"]},
        "steps": o.steps, "scheduler": "ddim", "backend": backend, "backend_detail": _backend_detail(bench, backend),
        "stages": stages,
        "files": {"grid": "grid.png", "bench": "bench/bench.md", "pruned_model": "finetuned", "onnx": ["dense-onnx", "pruned-onnx"]},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    table = summary_table(report)
    (out / "summary.md").write_text(table + "\n")
    log(table)
    log(f"report: {out / 'report.json'}   grid: {out / 'grid.png'}")
    return report


def _digit_judgement(images: dict, data: str) -> dict | None:
    """The shipped digits classifier's verdict on each model's samples and on real held-out digits
    (the last 1,000 of builtin:digits, which it did not train on), when the demo runs on digits."""
    if data != "builtin:digits" or images["dense"].shape[-1] != 1:
        return None
    from .data.images import ASSETS
    from .evaluation.metrics import digit_confidence

    with np.load(ASSETS / "digits.npz", allow_pickle=False) as z:
        real = z["images"][9000:, :, :, None]  # (1000, 28, 28, 1) uint8
    return {"dense": digit_confidence(images["dense"]), "pruned": digit_confidence(images["pruned"]),
            "real_held_out": digit_confidence(real)}


def _backend_detail(bench: dict, backend: str) -> str:
    """"openvino (bf16)" where the bench recorded OpenVINO's inference precision, else the spec."""
    for rows in bench.get("batches", {}).values():
        for row in rows.values():
            if row.get("backend") == backend and row.get("precision"):
                return f"{backend} ({row['precision']})"
    return backend


def summary_table(r: dict) -> str:
    """One row per model; the headline batch (the largest) first, batch 1 beside it."""
    d, p = r["dense"], r["pruned"]
    batches = sorted(r["latency"], key=lambda b: -int(b))
    digits = r.get("digits")
    lines = [f"{r['steps']} DDIM steps, end to end (noise -> uint8 images), {r.get('backend_detail', r['backend'])}, "
             f"ms per image; quality over {r['pruned'].get('n', '')} images from the same noise".replace(" over  images", ""),
             ""]
    head = ["model", "params", "MACs"]
    for b in batches:
        head += [f"batch {b}: ms / image", "speedup"]
    head += ["SSIM vs dense"]
    if digits:
        head += [f"digits classified (p >= {digits['dense']['threshold']})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def share(q):
        return f"{100 * q['confident_share']:.0f} % ({q['classes_covered']} classes)"

    def row(name, params, macs, ms_key, speed, ssim, q):
        cells = [name, f"{params / 1e6:.2f}M" if params else "-", f"{macs / 1e6:.0f}M" if macs else "-"]
        for b in batches:
            lat = r["latency"][b]
            ms = lat.get(ms_key) if ms_key else None
            cells += [f"{ms:.1f}" if ms else "-", speed(lat) if ms else "-"]
        cells.append(ssim)
        if digits:
            cells.append(share(q) if q else "-")
        return "| " + " | ".join(cells) + " |"

    lines.append(row("dense", d["params"], d["macs"], "dense_ms_per_image", lambda lat: "1.00x", "1.000",
                     digits and digits["dense"]))
    lines.append(row("pruned + fine-tuned", p["params"], p["macs"], "pruned_ms_per_image",
                     lambda lat: f"**{lat['speedup']:.2f}x**", f"{p['ssim_vs_dense']:.3f}", digits and digits["pruned"]))
    if any(lat.get("torch_eager_dense_ms_per_image") for lat in r["latency"].values()):
        lines.append(row("dense, diffusers PyTorch eager", d["params"], d["macs"], "torch_eager_dense_ms_per_image",
                         lambda lat: f"{lat['dense_ms_per_image'] / lat['torch_eager_dense_ms_per_image']:.2f}x", "-", None))
    if digits:
        lines.append(row("real digits (held out)", None, None, None, None, "-", digits["real_held_out"]))
    return "\n".join(lines)
