"""Stable Diffusion 1.5 on this CPU, prompt -> 512x512 uint8 image with classifier-free guidance: the dense
pipeline vs the same pipeline with its UNet pruned to half the MACs, on the torch-free runtime, next to the
diffusers StableDiffusionPipeline in PyTorch eager (the dense baseline users would otherwise run).

The SD-1.5 architecture (arch:sd15: UNet 859.5M params, CLIP ViT-L/14 text encoder, the f8 VAE) with random
weights: latency does not depend on weight values, nor on which channels pruning keeps, only on the widths.
So the UNet is pruned with the cheap magnitude criterion (no data, minutes) instead of Diff-Pruning's
gradients (476 s, 19.5 GB peak): same --target-macs 0.5, same kind of widths.

    python benchmarks/sd15_cpu.py WORK [--steps 4] [--runs 3] [--backend ort-cpu] [--threads 2]

Stages, each skipped when its output is in WORK already: export the dense pipeline (arch:sd15), prune the
UNet (magnitude, --target-macs 0.5), write a pipeline folder around it (text encoder, tokenizer, VAE and
scheduler of arch:sd15, as StableDiffusionPipeline.save_pretrained lays them out), export that, then
`diffprune bench` both exports and the eager baseline, each in its own process, runs alternating.
Heavy stages run under `flock -s /tmp/diffprune-timing.lock`, the timing under `flock -x` (this project's
shared machine: no measurement while another heavy job runs). Results: benchmarks/results/sd15_cpu/.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

LOCK = "/tmp/diffprune-timing.lock"
RESULTS = Path(__file__).resolve().parent / "results" / "sd15_cpu"


def run(argv, exclusive=False):
    lock = ["flock", "-x" if exclusive else "-s", LOCK] if shutil.which("flock") else []
    print("+", " ".join(argv), flush=True)
    subprocess.run(lock + argv, check=True)


def diffprune(*args, exclusive=False):
    run([sys.executable, "-m", "diffprune", *map(str, args)], exclusive=exclusive)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="folder for the exports (about 6 GB)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "dense-onnx").is_dir():
        diffprune("export", "arch:sd15", work / "dense-onnx", "--max-batch", 1, "--opt-batch", 1)
    if not (work / "pruned-pipeline").is_dir():  # a pipeline in, a pipeline out: arch:sd15's parts around the pruned UNet
        diffprune("prune", "arch:sd15", work / "pruned-pipeline", "--method", "magnitude", "--target-macs", 0.5, "--quiet")
    if not (work / "pruned-onnx").is_dir():
        diffprune("export", work / "pruned-pipeline", work / "pruned-onnx", "--max-batch", 1, "--opt-batch", 1)
    bench = ["bench", work / "dense-onnx", work / "pruned-onnx", "--backend", a.backend, "--batch", 1,
             "--steps", a.steps, "--runs", a.runs, "--warmup", a.warmup, "--guidance", a.guidance,
             "--torch-baseline", "arch:sd15", "--out", a.out, "--overwrite", "--quiet"]
    if a.threads:
        bench += ["--threads", a.threads]
    diffprune(*bench, exclusive=True)


if __name__ == "__main__":
    main()
