"""ONNX Runtime CPU session options: UNet latency and peak memory, dense vs pruned, side by side.

Why the CPU runner turns ONNX Runtime's memory pattern off and keeps the arena: each (model, variant)
pair is served by a process of its own (as in `diffprune bench`), the parent asks them in turn for
one timed batch of UNet calls each (A B C ... A B C ...), and each process reports its peak resident
memory (VmHWM) at the end.

    bash benchmarks/e2e_cifar10_cpu.sh    # once, makes cifar-*-onnx in the current folder
    python benchmarks/ort_cpu_options.py cifar-dense-onnx cifar-pruned-3.4G-onnx --batch 1,8
    # writes benchmarks/results/ort_cpu_options/options.{json,md}

Variants: ``runner`` (what `diffprune.runtime` uses: arena on, memory pattern off), ``pattern`` (ONNX
Runtime's default, memory pattern on), ``no-arena`` (no CPU arena, memory pattern off).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diffprune.runtime.bench import WORKER_ENV  # the bench workers' environment

VARIANTS = {"runner": dict(arena=True, pattern=False), "pattern": dict(arena=True, pattern=True),
            "no-arena": dict(arena=False, pattern=False)}


def vm_hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024


def worker(folder, batch, variant, threads, calls):
    import onnxruntime as ort

    meta = json.loads((Path(folder) / "model.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_cpu_mem_arena = VARIANTS[variant]["arena"]
    options.enable_mem_pattern = VARIANTS[variant]["pattern"]
    options.add_free_dimension_override_by_name(meta["inputs"][0]["shape"][0], batch)  # as open_runner(..., batch=N)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(Path(folder) / meta.get("file", "model.onnx")), options,
                                   providers=["CPUExecutionProvider"])
    c, (h, w) = meta["in_channels"], meta["sample_size"]
    feed = {"sample": np.random.default_rng(0).standard_normal((batch, c, h, w), dtype=np.float32),
            "timestep": np.full((batch,), 500, dtype=np.float32)}
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        session.run(None, feed)
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        print((time.perf_counter() - started) / calls, flush=True)
    print(json.dumps({"peak_mib": vm_hwm_mib()}), flush=True)


def measure(folders, batch, threads, runs, calls):
    procs = {}
    for folder in folders:
        for variant in VARIANTS:
            procs[(folder, variant)] = p = subprocess.Popen(
                [sys.executable, __file__, "--worker", folder, str(batch), variant, str(threads), str(calls)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **WORKER_ENV})
            assert p.stdout.readline().strip() == "ready", f"worker for {folder} {variant} failed"
    times = {key: [] for key in procs}
    for _ in range(runs):
        for key, p in procs.items():  # interleaved, one process at a time
            p.stdin.write("go\n")
            p.stdin.flush()
            times[key].append(float(p.stdout.readline()))
    rows = []
    for (folder, variant), p in procs.items():
        p.stdin.close()
        peak = json.loads(p.stdout.readline())["peak_mib"]
        p.wait()
        t = times[(folder, variant)]
        rows.append({"model": Path(folder).name, "variant": variant, **VARIANTS[variant], "batch": batch,
                     "median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3,
                     "p90_ms": float(np.percentile(t, 90)) * 1e3, "peak_mib": peak})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="ONNX artifact folders from `diffprune export`")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed rounds per process")
    parser.add_argument("--calls", type=int, default=5, help="UNet calls per timed round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ort_cpu_options"))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder, batch, variant, threads, calls = args.worker
        return worker(folder, int(batch), variant, int(threads), int(calls))
    if not args.folders:
        parser.error("give at least one ONNX artifact folder")
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        rows += measure(args.folders, batch, args.threads, args.runs, max(1, args.calls // batch))
    import onnxruntime

    record = {"command": "python benchmarks/ort_cpu_options.py " + " ".join(sys.argv[1:]), "rows": rows,
              "threads": args.threads, "runs": args.runs, "onnxruntime": onnxruntime.__version__,
              "machine": platform.platform(), "env": WORKER_ENV}
    lines = [f"# ONNX Runtime CPU options: UNet latency and peak memory ({args.threads} threads)", "",
             f"Command: `{record['command']}`  ", f"ONNX Runtime {onnxruntime.__version__}, {platform.machine()}; "
             f"{args.runs} interleaved rounds per process, one process per row.", "",
             "| batch | model | variant | arena | memory pattern | median ms / call | min ms | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['model']} | {r['variant']} | {'on' if r['arena'] else 'off'} | "
              f"{'on' if r['pattern'] else 'off'} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['peak_mib']:.0f} |"
              for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
