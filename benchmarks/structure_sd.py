"""Structure of pruned latent and text-conditioned UNets at real size (random weights: params and
MACs do not depend on weight values), with BK-SDM's published SD-1.x UNet sizes beside them.

    python benchmarks/structure_sd.py                  # sd15 and ldm-celebahq-256; about 10 minutes on 2 cores
    python benchmarks/structure_sd.py --arch sdxl --dense-only sdxl   # counted only: pruning copies need > 24 GiB

Magnitude importance (no gradients: the structure does not depend on the criterion, only on the
widths it keeps). MACs are counted by torch-pruning with the real inputs (latents at the default
resolution, 77 text tokens, SDXL's added conditioning); they leave out the attention matmuls inside
scaled_dot_product_attention, so they understate attention-heavy models (the same for dense and pruned).
Writes benchmarks/results/structure_sd.{json,md}.
"""

import argparse
import gc
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# BK-SDM (Kim et al. 2023, arXiv 2305.15798), Table 1: UNet parameters of SD-v1.4 and its block-removed variants.
BK_SDM = [("SD-v1.4 UNet (BK-SDM Table 1)", 0.86e9), ("BK-SDM-Base", 0.58e9), ("BK-SDM-Small", 0.49e9),
          ("BK-SDM-Tiny", 0.33e9)]


def measure(arch: str, settings) -> list:
    from diffprune.sources.unet import build_unet, count_macs_params
    from diffprune.pruning.pruner import prune

    rows = []
    for label, kwargs in settings:
        model = build_unet(arch)
        started = time.perf_counter()
        if kwargs is None:  # dense only: one forward to count, no pruning copies (SDXL's 2.6B params)
            macs, params = count_macs_params(model)
            before = after = {"params": params, "macs": macs}
        else:
            _, report = prune(model, method="magnitude", progress=False, **kwargs)
            before = {"params": report.params_before, "macs": report.macs_before}
            after = {"params": report.params_after, "macs": report.macs_after}
            del report
        rows.append({"arch": arch, "setting": label, "params_before": before["params"],
                     "params_after": after["params"], "macs_before": before["macs"],
                     "macs_after": after["macs"], "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
        del model
        gc.collect()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="architectures (default sd15, ldm-celebahq-256)")
    parser.add_argument("--dense-only", action="append", default=[], help="architectures to count without pruning")
    args = parser.parse_args()
    archs = args.arch or ["sd15", "ldm-celebahq-256"]
    settings = [("--ratio 0.3", {"ratio": 0.3}), ("--target-macs 0.5", {"target_macs": 0.5})]
    out = RESULTS / "structure_sd.json"
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in previous if r["arch"] not in archs]  # other architectures' rows from earlier runs stay
    for arch in archs:
        rows += measure(arch, [("dense", None)] if arch in args.dense_only else settings)
    lines = ["| UNet | setting | params | MACs | params kept | MACs kept | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['setting']} | {r['params_before'] / 1e6:.1f}M → {r['params_after'] / 1e6:.1f}M | "
                     f"{r['macs_before'] / 1e9:.1f}G → {r['macs_after'] / 1e9:.1f}G | "
                     f"{r['params_after'] / r['params_before']:.1%} | {r['macs_after'] / r['macs_before']:.1%} | {r['seconds']} |")
    lines += ["", "BK-SDM's published UNet sizes (block removal + distillation), for context:", "",
              "| model | UNet params |", "|---|---|"] + [f"| {name} | {p / 1e9:.2f}B |" for name, p in BK_SDM]
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "bk_sdm": BK_SDM,
                                 "command": "python benchmarks/structure_sd.py " + " ".join(
                                     f"--arch {a}" for a in archs)}, indent=1))
    (RESULTS / "structure_sd.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
