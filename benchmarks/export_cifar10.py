"""Export benchmark on the google/ddpm-cifar10-32 architecture (random weights; structure and speed only).

Dense vs pruned (ratio 0.3, the paper's 3.4G-MAC setting): export time, file size, ONNX Runtime CPU
UNet latency (one forward, interleaved A B A B so machine drift cancels), fp16 validation error,
both exporters, and the onnxslim option.

    python benchmarks/export_cifar10.py     # writes benchmarks/results/export_cifar10.{json,md}
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import diffprune
from diffprune.export import to_onnx
from diffprune.sources.unet import build_unet, versions


def latencies(paths: dict, batch: int, runs: int, threads: int) -> dict:
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"sample": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32),
            "timestep": np.full((batch,), 500, dtype=np.float32)}
    times = {name: [] for name in sessions}
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(runs):
        for name, s in sessions.items():  # interleaved
            started = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - started)
    return {name: {"median_ms": round(float(np.median(t)) * 1e3, 2), "p90_ms": round(float(np.percentile(t, 90)) * 1e3, 2),
                   "min_ms": round(float(np.min(t)) * 1e3, 2)} for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_cifar10"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffprune-bench-"))
    dense = build_unet("ddpm-cifar10-32")
    pruned, report = diffprune.prune(dense, method="magnitude", ratio=0.3, progress=False)
    diffprune.save(dense, work / "dense-folder")
    diffprune.save(pruned, work / "pruned-folder", info={"pruning": report.to_dict()})
    exports, rows = {}, []
    for model in ("dense", "pruned"):
        for dtype, exporter, slim in (("fp32", "dynamo", False), ("fp32", "torchscript", False),
                                      ("fp32", "dynamo", True), ("fp16", "dynamo", False)):
            key = f"{model}-{dtype}-{exporter}{'-slim' if slim else ''}"
            result = to_onnx(work / f"{model}-folder", work / key, dtype=dtype, exporter=exporter, slim=slim)
            v = result.model_json["validation"]
            exports[key] = result.onnx_path
            import onnx

            rows.append({"export": key, "model": model, "dtype": dtype, "exporter": exporter, "slim": slim,
                         "seconds": round(result.seconds, 1), "mb": round(result.megabytes, 1),
                         "nodes": len(onnx.load(str(result.onnx_path), load_external_data=False).graph.node),
                         "max_abs_error": v["max_abs_error"], "max_rel_error": v["max_rel_error"],
                         "params_M": round(result.model_json["params"] / 1e6, 2),
                         "macs_G": round(result.model_json["macs"] / 1e9, 3)})
            print(rows[-1])
    lat = {b: latencies(exports, b, args.runs, args.threads) for b in (1, 8)}
    for row in rows:
        for b in (1, 8):
            row[f"ort_cpu_b{b}"] = lat[b][row["export"]]
    speedup = {b: round(lat[b]["dense-fp32-dynamo"]["median_ms"] / lat[b]["pruned-fp32-dynamo"]["median_ms"], 2) for b in (1, 8)}
    result = {
        "command": f"python benchmarks/export_cifar10.py --runs {args.runs} --threads {args.threads}",
        "machine": {"cpu": platform.processor() or platform.machine(), "ort_threads": args.threads},
        "versions": versions(), "rows": rows, "pruned_speedup_unet_forward": speedup,
        "macs_ratio": round(rows[0]["macs_G"] / rows[4]["macs_G"], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# ONNX export, google/ddpm-cifar10-32 architecture: dense vs pruned (ratio 0.3)\n",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, ONNX Runtime CPU with {args.threads} threads, torch {result['versions']['torch']}. "
        f"UNet forward latency, median of {args.runs} interleaved runs after warm-up.\n",
        "| export | params (M) | MACs (G) | export s | MB | nodes | max-abs err | rel err | b=1 median ms | b=1 p90 | b=8 median ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['export']} | {r['params_M']} | {r['macs_G']} | {r['seconds']} | {r['mb']} | {r['nodes']} | "
                     f"{r['max_abs_error']:.1e} | {r['max_rel_error']:.1e} | {r['ort_cpu_b1']['median_ms']} | "
                     f"{r['ort_cpu_b1']['p90_ms']} | {r['ort_cpu_b8']['median_ms']} |")
    lines.append(f"\nPruned vs dense UNet forward speedup (fp32, dynamo): batch 1 {speedup[1]}x, batch 8 {speedup[8]}x "
                 f"(MACs ratio {result['macs_ratio']}x).")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
