"""Stable Diffusion 1.5 on this CPU, prompt -> 512x512 uint8 image with classifier-free guidance (issue 24's table):
the dense pipeline, the UNet pruned to half the MACs, UNet and VAE decoder pruned, and the latter with step caching
(DeepCache), on the torch-free runtime, next to the diffusers StableDiffusionPipeline in PyTorch eager (the dense
baseline users would otherwise run).

The SD-1.5 architecture (arch:sd15: UNet 859.5M params, CLIP ViT-L/14 text encoder, the f8 VAE) with random
weights: latency does not depend on weight values, nor on which channels pruning keeps, only on the widths.
So UNet and decoder are pruned with the cheap magnitude criterion (no data, no gradients) instead of
Diff-Pruning's gradients (476 s, 19.5 GB peak): same --target-macs 0.5, same kind of widths.

    python benchmarks/sd15_cpu.py WORK [--stages export|bench|all] [--steps 4,25] [--backend ort-cpu,openvino]
                                       [--runs 3] [--threads 2] [--arch sd15] [--cache-interval 3]

Stages, each skipped when its output is in WORK already (``--stages export`` runs only these, so the heavy part
can run on a shared machine and the timing later, alone):
  dense-onnx                  `diffprune export arch:sd15`
  pruned-unet-pipeline        `diffprune prune arch:sd15 --method magnitude --target-macs 0.5` (UNet only)
  pruned-unet-decoder-pipeline  `diffprune prune pruned-unet-pipeline --components decoder` (magnitude, 0.5): the
                              same UNet (a second UNet prune would give the same widths: magnitude is deterministic,
                              and it took 459 s and 18.5 GB at SD size), the decoder pruned as well
  pruned-unet-onnx            its export
  pruned-unet-decoder-onnx    its export with --step-cache (DeepCache's cache branch K = 1, the shallowest:
                              diffprune/sources/deepcache.py's default and DeepCache's for SD-1.5); with the cache
                              interval at 1 it is the "pruned UNet + decoder" row (the full graph's extra deep-feature
                              output costs a copy), at --cache-interval N the cached row.
Bench (``--stages bench``; ``--stages table`` only merges existing reports again), for each steps count and backend: one `diffprune bench` of dense, pruned-unet,
pruned-unet-decoder and the eager baseline (uncached: bench's --cache-interval applies to every artifact), then one
of pruned-unet-decoder at --cache-interval N with the eager baseline again (so "vs eager with caching" is measured
within one run, alternating), each its own report folder; then :func:`table` merges the two reports (ratios of
their measured medians, nothing else) into one table with the issue's targets.
Heavy stages run under `flock -s /tmp/diffprune-timing.lock`, the timing under `flock -x` (this project's shared
machine: no measurement while another heavy job runs); ``--lock none`` skips that.

Results (``--out``, default benchmarks/results/sd15_cpu/): per steps count and backend a folder
``steps{S}_{backend}/`` with ``uncached/`` and ``cache{N}/`` (bench.json, bench.md, bench.png) and the merged
``table.md`` / ``table.json``. ``before_bench.*`` is the first measurement (UNet pruned only, attention unfused).
``--arch tiny-sd`` runs the whole script on the tiny test architecture (a scratch --out: it proves the script, its
numbers mean nothing).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

LOCK = "/tmp/diffprune-timing.lock"
RESULTS = Path(__file__).resolve().parent / "results" / "sd15_cpu"
STEP_CACHE_BLOCKS = 1  # `diffprune export --step-cache` exports DeepCache's branch 1 (DeepCache(unet) default)
EAGER = "dense (diffusers, PyTorch eager)"
TARGETS = {"pruned_vs_dense_4_steps": 1.8, "cached_vs_eager": 3.0}


def run(argv, exclusive=False, lock=LOCK):
    use = lock and lock != "none" and shutil.which("flock")
    print("+", " ".join(argv), flush=True)
    subprocess.run((["flock", "-x" if exclusive else "-s", lock] if use else []) + argv, check=True)


def diffprune(*args, exclusive=False, lock=LOCK):
    run([sys.executable, "-m", "diffprune", *map(str, args)], exclusive=exclusive, lock=lock)


def export_stages(work: Path, arch: str, lock: str):
    """The five folders of the module docstring, each made unless it exists."""
    src = f"arch:{arch}"
    export = ["--max-batch", 1, "--opt-batch", 1]
    magnitude = ["--method", "magnitude", "--target-macs", 0.5, "--quiet"]
    stages = [
        ("dense-onnx", ["export", src, work / "dense-onnx", *export]),
        ("pruned-unet-pipeline", ["prune", src, work / "pruned-unet-pipeline", *magnitude]),
        ("pruned-unet-decoder-pipeline", ["prune", work / "pruned-unet-pipeline", work / "pruned-unet-decoder-pipeline",
                                          "--components", "decoder", *magnitude]),
        ("pruned-unet-onnx", ["export", work / "pruned-unet-pipeline", work / "pruned-unet-onnx", *export]),
        ("pruned-unet-decoder-onnx", ["export", work / "pruned-unet-decoder-pipeline", work / "pruned-unet-decoder-onnx",
                                      *export, "--step-cache"]),
    ]
    for name, args in stages:
        if (work / name).is_dir():
            print(f"= {work / name} exists: skipped", flush=True)
        else:
            diffprune(*args, lock=lock)


def bench_stage(work: Path, arch: str, steps: int, backend: str, a, lock: str) -> Path:
    """Both bench runs of one steps count and backend, then the merged table; returns the table's folder."""
    folder = a.out / f"steps{steps}_{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    common = ["--backend", backend, "--batch", 1, "--steps", steps, "--runs", a.runs, "--warmup", a.warmup,
              "--guidance", a.guidance, "--torch-baseline", f"arch:{arch}", "--overwrite", "--quiet"]
    if a.threads:
        common += ["--threads", a.threads]
    uncached, cached = folder / "uncached", folder / f"cache{a.cache_interval}"
    diffprune("bench", work / "dense-onnx", work / "pruned-unet-onnx", work / "pruned-unet-decoder-onnx",
              *common, "--out", uncached, exclusive=True, lock=lock)
    diffprune("bench", work / "pruned-unet-decoder-onnx", *common, "--cache-interval", a.cache_interval,
              "--out", cached, exclusive=True, lock=lock)
    print(write_table(folder, a.cache_interval, arch).read_text(), flush=True)
    return folder


def write_table(folder: Path, interval: int, arch: str) -> Path:
    """table.json and table.md in ``folder`` from its uncached/ and cache{interval}/ bench reports."""
    reports = [folder / name / "bench.json" for name in ("uncached", f"cache{interval}")]
    missing = [str(r) for r in reports if not r.is_file()]
    if missing:
        sys.exit(f"no bench report at {', '.join(missing)}: run --stages bench first")
    merged = table(*(json.loads(r.read_text()) for r in reports), arch)
    (folder / "table.json").write_text(json.dumps(merged, indent=1))
    (folder / "table.md").write_text(markdown(merged))
    return folder / "table.md"


def _paired(first_runs, runs) -> float | None:
    """The median over rounds of first / this, within each round (bench's "paired")."""
    pairs = [f / r for f, r in zip(first_runs or [], runs or [])]
    return statistics.median(pairs) if pairs else None


def table(uncached: dict, cached: dict, arch: str = "sd15") -> dict:
    """Issue 24's table from two `diffprune bench` reports (bench.json) of one steps count and backend: ``uncached``
    (dense-onnx, pruned-unet-onnx, pruned-unet-decoder-onnx and the eager baseline) and ``cached`` (the last at a
    cache interval, and the eager baseline again). Only ratios of the medians they measured; "vs eager" of the cached
    row is paired within its own run, the others within the uncached run; "vs dense" of the cached row crosses the
    two runs (its drift shows in the two eager medians)."""
    rows_u = next(iter(uncached["batches"].values()))
    rows_c = next(iter(cached["batches"].values()))
    interval = cached["cache_interval"]
    labels = {"dense-onnx": "dense", "pruned-unet-onnx": "pruned UNet",
              "pruned-unet-decoder-onnx": "pruned UNet + decoder"}
    dense, eager_u, eager_c = rows_u["dense-onnx"], rows_u.get(EAGER), rows_c.get(EAGER)
    picked = [(labels[n], rows_u[n], eager_u, "uncached") for n in labels] + \
        [(f"pruned UNet + decoder, cache interval {interval}", rows_c["pruned-unet-decoder-onnx"], eager_c,
          f"cache{interval}")]
    if eager_u:
        picked.append(("diffusers PyTorch eager (dense)", eager_u, None, "uncached"))
    out = []
    for label, r, eager, run_name in picked:
        e2e = r["e2e_ms"]["median"]
        out.append({
            "model": label, "run": run_name, "backend": r.get("backend"), "cache_interval": interval if run_name != "uncached" else 1,
            "params": r.get("params"), "macs": r.get("macs"), "parts_ms": r.get("parts_ms") or {},
            "e2e_ms": e2e, "e2e_p90_ms": r["e2e_ms"]["p90"], "peak_rss_mib": r.get("peak_rss_mib"),
            "vs_dense": dense["e2e_ms"]["median"] / e2e,
            "vs_eager": eager["e2e_ms"]["median"] / e2e if eager else None,
            "vs_eager_paired": _paired(eager.get("e2e_ms_runs"), r.get("e2e_ms_runs")) if eager else None,
        })
    by = {row["model"]: row for row in out}
    pud, cache_row = by["pruned UNet + decoder"], out[3]
    eager_peak = eager_u.get("peak_rss_mib") if eager_u else None
    checks = {
        f"pruned UNet + decoder >= {TARGETS['pruned_vs_dense_4_steps']}x dense end to end"
        + ("" if uncached["steps"] == 4 else " (the target is for 4 steps)"):
            (pud["vs_dense"], pud["vs_dense"] >= TARGETS["pruned_vs_dense_4_steps"]),
        f"with caching >= {TARGETS['cached_vs_eager']}x diffusers eager":
            (cache_row["vs_eager"], cache_row["vs_eager"] is not None and cache_row["vs_eager"] >= TARGETS["cached_vs_eager"]),
    }
    if eager_peak:
        runtime_peak = max(row["peak_rss_mib"] or 0 for row in out[:4])
        checks["runtime peak memory <= eager's"] = (runtime_peak / eager_peak, runtime_peak <= eager_peak)
    return {"arch": arch, "steps": uncached["steps"], "scheduler": uncached["scheduler"], "backend": uncached["backend"],
            "guidance": uncached.get("guidance"), "prompt": uncached.get("prompt"), "threads": uncached["threads"],
            "runs": uncached["runs"], "warmup": uncached["warmup"], "cache_interval": interval,
            "step_cache_blocks": STEP_CACHE_BLOCKS, "machine": uncached["machine"],
            "eager_ms": {"uncached run": eager_u["e2e_ms"]["median"] if eager_u else None,
                         "cached run": eager_c["e2e_ms"]["median"] if eager_c else None},
            "rows": out, "targets": {k: {"value": v, "met": ok} for k, (v, ok) in checks.items()},
            "reports": {"uncached": uncached.get("command") or "uncached/bench.json",
                        "cached": cached.get("command") or f"cache{interval}/bench.json"}}


def markdown(t: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{v:,.1f}"

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    lines = [f"# arch:{t['arch']}, prompt -> image, {t['steps']} {t['scheduler']} steps, guidance {t['guidance']}, "
             f"batch 1, {t['backend']}", "",
             f"Machine: {t['machine']['processor']}; {t['threads']} threads; {t['runs']} timed runs after {t['warmup']} "
             f"warm-up, each model in its own process, runs alternating within each of two `diffprune bench` runs "
             f"(uncached/, cache{t['cache_interval']}/); medians, ms. Step caching: DeepCache branch "
             f"{t['step_cache_blocks']}, the whole UNet at steps 0, {t['cache_interval']}, {2 * t['cache_interval']}, ... and the "
             "shallow graph between.", "",
             "| model | run | text encoder | UNet | decoder | sampler | e2e | p90 | peak RSS MiB | vs dense | vs eager | "
             "vs eager, paired |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        p = r["parts_ms"]
        peak = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:,.0f}"
        lines.append(f"| {r['model']} | {r['run']} | {ms(p.get('text_encoder'))} | {ms(p.get('unet'))} | "
                     f"{ms(p.get('decoder'))} | {ms(p.get('sampler'))} | {ms(r['e2e_ms'])} | {ms(r['e2e_p90_ms'])} | {peak} | "
                     f"{x(r['vs_dense'])} | {x(r['vs_eager'])} | {x(r['vs_eager_paired'])} |")
    e = t["eager_ms"]
    lines += ["", "vs eager: the eager median of the same bench run over this row's; paired: the median over rounds of "
              "that ratio within a round. The cached row's vs dense crosses the two runs: eager measured "
              f"{ms(e['uncached run'])} ms in the uncached run and {ms(e['cached run'])} ms in the cached one.", "",
              "| target | value | met |", "|---|---|---|"]
    for name, v in t["targets"].items():
        lines.append(f"| {name} | {x(v['value'])} | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="folder for the pipelines and exports (about 12 GB at SD size)")
    p.add_argument("--arch", default="sd15", help="built-in architecture (default sd15; tiny-sd to try the script)")
    p.add_argument("--stages", choices=("export", "bench", "table", "all"), default="all",
                   help="export: prune and export only; bench: time existing exports only (and merge); table: only "
                        "merge existing bench reports again; all (default)")
    p.add_argument("--steps", default="4", help="comma-separated steps counts, one table each (default 4; e.g. 4,25)")
    p.add_argument("--backend", default="ort-cpu", help="comma-separated backends, one table each (ort-cpu, openvino)")
    p.add_argument("--cache-interval", type=int, default=3, help="step caching: the whole UNet every N-th step (default 3)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--lock", default=LOCK, help=f"flock file (default {LOCK}); none: no locking")
    a = p.parse_args(argv)
    if a.arch != "sd15" and a.out == RESULTS:
        p.error(f"--arch {a.arch}: give a scratch --out; {RESULTS} holds the SD-1.5 results")
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    if a.stages in ("export", "all"):
        export_stages(work, a.arch, a.lock)
    if a.stages == "table":
        for steps in (int(s) for s in a.steps.split(",")):
            for backend in a.backend.split(","):
                print(f"wrote {write_table(a.out / f'steps{steps}_{backend}', a.cache_interval, a.arch)}", flush=True)
    if a.stages in ("bench", "all"):
        missing = [n for n in ("dense-onnx", "pruned-unet-onnx", "pruned-unet-decoder-onnx") if not (work / n).is_dir()]
        if missing:
            p.error(f"{', '.join(missing)} missing in {work}: run --stages export first")
        for steps in (int(s) for s in a.steps.split(",")):
            for backend in a.backend.split(","):
                print(f"wrote {bench_stage(work, a.arch, steps, backend, a, a.lock)}/table.md", flush=True)


if __name__ == "__main__":
    main()
