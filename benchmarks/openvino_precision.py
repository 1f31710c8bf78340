"""Does OpenVINO's default precision change the images? The shipped, trained digits DDPM, sampled from
the same seeds on ONNX Runtime (float32), OpenVINO float32 and OpenVINO's default (bf16 on CPUs with
bf16 units): SSIM / PSNR against ONNX Runtime, and the precision that ran.

    python benchmarks/openvino_precision.py [--n 64] [--steps 50]     # about a minute on 2 cores

Writes benchmarks/results/openvino_precision.{json,md}. A random-weight model is no test of this: its
sampling is chaotic, and any rounding sends it elsewhere (measured and recorded here too, for the
CIFAR-10 architecture, as a warning rather than a verdict).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("ort-cpu", "openvino@f32", "openvino")


def main(argv=None) -> int:
    from diffprune.evaluation.benchmark import installed_versions
    from diffprune.export import to_onnx
    from diffprune.evaluation.metrics import consistency
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    a = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="diffprune-ov-precision-"))
    models = {"digits DDPM (trained, shipped)": "builtin:digits-ddpm",
              "CIFAR-10 DDPM architecture (random weights)": "arch:ddpm-cifar10-32"}
    rows = []
    for label, src in models.items():
        export = work / src.split(":")[1]
        to_onnx(src, export, batch=(1, 16, 16), exporter="torchscript")
        images, precision = {}, {}
        for backend in BACKENDS:
            with open_runner(export, backend, batch=16) as runner:
                sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
                images[backend] = sampler.generate(a.n, seed=0, steps=a.steps, batch=16)
                precision[backend] = getattr(runner, "info", {}).get("precision", "f32")
        for backend in BACKENDS[1:]:
            c = consistency(images[backend], images["ort-cpu"])
            rows.append({"model": label, "backend": backend, "precision": precision[backend],
                         "ssim_vs_ort_cpu": c["ssim"], "psnr_db_vs_ort_cpu": c["psnr_db"], "n": a.n, "steps": a.steps})
            print(rows[-1], flush=True)
    command = "python benchmarks/openvino_precision.py" + "".join(f" {x}" for x in (argv or sys.argv[1:]))
    record = {"command": command, "rows": rows, "versions": installed_versions()}
    out = ROOT / "benchmarks" / "results"
    (out / "openvino_precision.json").write_text(json.dumps(record, indent=1, default=str))
    lines = ["# OpenVINO precision against ONNX Runtime float32, same seeds", "", f"Command: `{command}`", "",
             "| model | backend | precision that ran | SSIM vs ort-cpu | PSNR dB vs ort-cpu |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['ssim_vs_ort_cpu']:.4f} | "
                     f"{r['psnr_db_vs_ort_cpu']:.1f} |")
    (out / "openvino_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
