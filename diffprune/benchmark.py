"""`diffprune bench`: dense vs pruned end-to-end latency on a deployment runtime, next to the
baseline a user would otherwise run (the dense model in a diffusers pipeline, PyTorch eager).

The runtime side (runners, sampler, interleaved timing) is torch-free and lives in
diffprune.runtime.bench; torch appears here only for the eager baseline.
"""

import json
import platform
import time
from pathlib import Path

from ._io import atomic_dir
from .errors import DiffPruneError


def torch_eager_case(src, batch: int, steps: int, device: str = "cpu", name: str = "dense (diffusers, PyTorch eager)"):
    """A bench case running ``DDIMPipeline`` on the dense model: noise -> uint8, as users run it."""
    import numpy as np
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler

    from .models import load_source
    from .runtime.bench import Case

    unet, scheduler_config, _ = load_source(src, device=device)
    allowed = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    pipe = DDIMPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(allowed))
    pipe.set_progress_bar_config(disable=True)
    spent = [0.0]
    marks = {}

    def before(module, args):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        marks["t"] = time.perf_counter()

    def after(module, args, output):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        spent[0] += time.perf_counter() - marks["t"]

    unet.register_forward_pre_hook(before)
    unet.register_forward_hook(after)
    counter = iter(range(10**9))

    def run():
        spent[0] = 0.0
        with torch.no_grad():
            images = pipe(batch_size=batch, num_inference_steps=steps, output_type="np",
                          generator=torch.Generator(device="cpu").manual_seed(next(counter))).images
        (np.asarray(images) * 255).round().astype(np.uint8)
        return spent[0]

    return Case(name, run, {"backend": f"torch-eager-{device}", "torch": torch.__version__})


def run_bench(artifacts, backend: str = "ort-cpu", batches=(1,), steps: int = 50, scheduler: str = "ddim",
              runs: int = 10, warmup: int = 1, threads: int | None = None, torch_baseline: str | None = "auto",
              memory: bool = True, progress: bool = True) -> dict:
    """Measure every artifact (and the torch baseline) at every batch size; return the report dict."""
    from tqdm.auto import tqdm

    from .runtime.artifact import describe
    from .runtime.bench import measure, peak_memory, runtime_case
    from .runtime.runners import open_runner

    if len(artifacts) < 1:
        raise DiffPruneError("Give at least one artifact to measure (dense first, then pruned ones).")
    metas = {}
    for path in artifacts:
        kind, folder, meta = describe(path)
        metas[str(path)] = meta if kind == "onnx" else {**meta["model"], "batch": meta["profile"]["batch"]}
    baseline_src = None
    if torch_baseline == "auto":
        first = metas[str(artifacts[0])].get("source", {})
        baseline_src = first.get("source") if first.get("format") != "diffprune" or first.get("source") else None
    elif torch_baseline not in (None, "none"):
        baseline_src = torch_baseline
    results = {"batches": {}}
    for batch in batches:
        cases, runners = [], []
        try:
            for path in artifacts:
                runner = open_runner(path, backend, threads=threads).open()
                runners.append(runner)
                meta = metas[str(path)]
                cases.append(runtime_case(Path(path).name, runner, scheduler, steps, batch,
                                          info={"artifact": str(path), "params": meta.get("params"), "macs": meta.get("macs")}))
            if baseline_src:
                import torch

                device = "cuda" if backend != "ort-cpu" and torch.cuda.is_available() else "cpu"
                if threads and device == "cpu":
                    torch.set_num_threads(threads)
                case = torch_eager_case(baseline_src, batch, steps, device)
                case.info.update(params=metas[str(artifacts[0])].get("params"), macs=metas[str(artifacts[0])].get("macs"))
                cases.append(case)
            bar = tqdm(total=runs, desc=f"batch {batch}", disable=not progress, leave=False)
            results["batches"][batch] = measure(cases, batch, runs=runs, warmup=warmup,
                                                progress=lambda k, n: bar.update(1))
            bar.close()
        finally:
            for runner in runners:
                runner.close()
    if memory:
        results["memory"] = {Path(p).name: peak_memory(p, backend, batches[0], scheduler=scheduler) for p in artifacts}
    dense = Path(artifacts[0]).name
    for batch, rows in results["batches"].items():
        base = rows[dense]["e2e_ms"]["median"]
        for row in rows.values():
            row["speedup_vs_first"] = base / row["e2e_ms"]["median"]
    from .models import versions

    results.update({
        "backend": backend, "steps": steps, "scheduler": scheduler, "runs": runs, "warmup": warmup,
        "threads": threads, "artifacts": [str(a) for a in artifacts], "torch_baseline": baseline_src,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "versions": versions(),
    })
    return results


def markdown(results: dict, command: str = "") -> str:
    lines = [f"# End-to-end latency, {results['steps']} {results['scheduler']} steps, backend {results['backend']}\n"]
    if command:
        lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {results['machine']['processor']}, {results['machine']['platform']}; "
                 f"{results['runs']} timed runs after {results['warmup']} warm-up, models interleaved.\n")
    lines += ["| batch | model | backend | params (M) | MACs (G) | e2e median ms | p90 ms | min ms | UNet ms | sampler share | images/s | speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch, rows in results["batches"].items():
        for name, r in rows.items():
            params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "-"
            macs = f"{r['macs'] / 1e9:.2f}" if r.get("macs") else "-"
            lines.append(f"| {batch} | {name} | {r['backend']} | {params} | {macs} | {r['e2e_ms']['median']:.1f} | "
                         f"{r['e2e_ms']['p90']:.1f} | {r['e2e_ms']['min']:.1f} | {r['unet_ms']['median']:.1f} | "
                         f"{r['sampler_share']:.2%} | {r['images_per_s']:.2f} | {r['speedup_vs_first']:.2f}x |")
    if results.get("memory"):
        lines += ["", "| model | peak RSS MiB | before model MiB | model's share MiB |", "|---|---|---|---|"]
        for name, m in results["memory"].items():
            lines.append(f"| {name} | {m['peak_mib']:.0f} | {m['baseline_mib']:.0f} | {m['model_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path) -> bool:
    """Latency against batch, one line per model. Returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    batches = sorted(results["batches"], key=int)
    names = list(results["batches"][batches[0]])
    for name in names:
        ys = [results["batches"][b][name]["e2e_ms"]["median"] / int(b) for b in batches]
        ax.plot([int(b) for b in batches], ys, marker="o", label=name)
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per image (median, end-to-end)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"{results['steps']} {results['scheduler']} steps on {results['backend']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(results: dict, out, command: str = "", overwrite: bool = False) -> Path:
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "bench.json").write_text(json.dumps({**results, "command": command}, indent=1, default=str))
        (tmp / "bench.md").write_text(markdown(results, command))
        plot(results, tmp / "bench.png")
    return Path(out)
