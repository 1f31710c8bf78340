"""Pruning benchmark on the google/ddpm-cifar10-32 architecture (built from config, random weights).

Random weights are fine for what this measures: structure (params, MACs per method and setting,
next to the paper's 35.7M / 6.1G -> 19.8M / 3.4G) and the cost of importance estimation per timestep
on this machine. Quality needs trained weights: see the fine-tuning benchmark.

    python benchmarks/prune_cifar10.py            # writes benchmarks/results/prune_cifar10.{json,md}
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import diffprune
from diffprune.sources.unet import build_unet, versions

PAPER = {"dense": (35.7e6, 6.1e9), "pruned": (19.8e6, 3.4e9)}
METHODS = ["diff-pruning", "taylor", "magnitude", "random", "reinit"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=5, help="timesteps timed for importance (per-step cost)")
    parser.add_argument("--images", type=int, default=16, help="calibration images per timestep")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_cifar10"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    dense = build_unet("ddpm-cifar10-32")
    rows = []
    for setting in ({"ratio": 0.3}, {"target_macs": 0.5}, {"ratio": 0.3, "round_to": 1}):
        for method in METHODS:
            kwargs = dict(method=method, data="builtin:digits", num_images=args.images, micro_batch=args.images,
                          max_timesteps=args.timesteps, progress=False, round_to=setting.get("round_to", 8))
            kwargs.update({k: v for k, v in setting.items() if k != "round_to"})
            started = time.perf_counter()
            model, report = diffprune.prune(dense, **kwargs)
            seconds = time.perf_counter() - started
            steps = len(report.timesteps_used)
            rows.append({
                "setting": ", ".join(f"{k}={v}" for k, v in setting.items()) + ("" if "round_to" in setting else ", round_to=8"),
                "method": method, "ratio": report.ratio,
                "params_M": round(report.params_after / 1e6, 2), "macs_G": round(report.macs_after / 1e9, 3),
                "macs_kept": round(report.macs_after / report.macs_before, 3),
                "widths": sorted({w[1] for n, w in report.layer_widths.items() if n.endswith("conv1")}),
                "importance_s_per_timestep": round(report.importance_seconds / steps, 3) if steps else None,
                "prune_seconds": round(seconds, 2),
            })
            print(rows[-1])
    result = {
        "command": "python benchmarks/prune_cifar10.py " + f"--timesteps {args.timesteps} --images {args.images}",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "versions": versions(),
        "dense": {"params_M": round(report.params_before / 1e6, 2), "macs_G": round(report.macs_before / 1e9, 3)},
        "paper": {"dense": "35.7M / 6.1G", "pruned": "19.8M / 3.4G"},
        "calibration": f"{args.images} builtin:digits images, timing over the first {args.timesteps} timesteps",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Pruning google/ddpm-cifar10-32 (architecture, random weights)\n",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, torch {result['versions']['torch']}, "
        f"torch-pruning {result['versions']['torch_pruning']}\n",
        f"Dense: {result['dense']['params_M']}M params, {result['dense']['macs_G']}G MACs (paper: 35.7M / 6.1G). "
        "Paper's pruned model: 19.8M / 3.4G.\n",
        "| setting | method | ratio | params (M) | MACs (G) | MACs kept | conv1 widths | importance s / timestep |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = "-" if r["importance_s_per_timestep"] is None else f"{r['importance_s_per_timestep']:.3f}"
        lines.append(f"| {r['setting']} | {r['method']} | {r['ratio']:.3f} | {r['params_M']} | {r['macs_G']} | "
                     f"{r['macs_kept']:.1%} | {', '.join(map(str, r['widths']))} | {per} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
