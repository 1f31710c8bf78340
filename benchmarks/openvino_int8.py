"""Does INT8 (NNCF, OpenVINO) pay? `diffprune quantize` on the shipped, trained digits DDPM (quality and
speed, the default bar: SSIM >= 0.95 against float32 and faster than both float32 and OpenVINO's default
precision) and on the CIFAR-10 architecture pruned to the paper's 3.4G MACs (random weights: speed
only, the SSIM bar off, since a random model's images say nothing about quantization quality).

    python benchmarks/openvino_int8.py [WORKDIR]     # about 3 minutes on 2 cores

WORKDIR (default: a temporary folder) holds the exports; existing ones are reused. Writes
benchmarks/results/openvino_int8.{json,md}; a refused model is recorded with the reason.
"""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import diffprune
    from diffprune import DiffPruneError
    from diffprune.evaluation.benchmark import installed_versions
    from diffprune.export import to_onnx
    from diffprune.export.openvino_int8 import quantize_int8
    from diffprune.sources.unet import build_unet

    argv = sys.argv[1:] if argv is None else argv
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="diffprune-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "digits-onnx").exists():
        to_onnx("builtin:digits-ddpm", work / "digits-onnx", batch=(1, 1, 16))
    if not (work / "cifar-pruned-3.4G-onnx").exists():
        pruned, _ = diffprune.prune(build_unet("ddpm-cifar10-32"), method="magnitude", ratio=0.3, progress=False)
        to_onnx(pruned, work / "cifar-pruned-3.4G-onnx", batch=(1, 1, 16))
    cases = [("digits DDPM (trained, shipped)", "digits-onnx", 0.95),
             ("CIFAR-10 architecture at 3.4G MACs (random weights; speed only)", "cifar-pruned-3.4G-onnx", 0.0)]
    rows = []
    for label, name, min_ssim in cases:
        out = work / f"{name}-int8"
        try:
            record = quantize_int8(work / name, out, n=16, steps=50, min_ssim=min_ssim, threads=2, overwrite=True)
            rows.append({"model": label, "kept": True, **record["validation"]})
        except DiffPruneError as e:
            rows.append({"model": label, "kept": False, "reason": str(e)})
        print(rows[-1], flush=True)
    record = {"command": "python benchmarks/openvino_int8.py", "rows": rows, "versions": installed_versions()}
    results = ROOT / "benchmarks" / "results"
    (results / "openvino_int8.json").write_text(json.dumps(record, indent=1, default=str))
    lines = ["# INT8 with NNCF on OpenVINO, one UNet call at batch 1, 2 threads", "",
             f"Command: `{record['command']}`", "",
             "| model | SSIM vs float32 (16 images, 50 DDIM steps) | float32 ms | default precision ms | INT8 ms | "
             "INT8 speedup vs the faster | kept |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ssim_vs_fp32" in r:
            lines.append(f"| {r['model']} | {r['ssim_vs_fp32']:.4f} | {r['fp32_unet_ms']:.2f} | "
                         f"{r['default_unet_ms']:.2f} ({r['default_precision']}) | {r['int8_unet_ms']:.2f} | "
                         f"{r['unet_speedup']:.2f}x | {'yes' if r['kept'] else 'no'} |")
        else:
            lines.append(f"| {r['model']} | - | - | - | - | - | no: {r['reason']} |")
    (results / "openvino_int8.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
