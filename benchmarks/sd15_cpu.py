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
import json
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


def write_pipeline_folder(pruned_unet: Path, out: Path, arch: str = "sd15") -> None:
    """A StableDiffusionPipeline folder: arch:ARCH's text encoder, tokenizer, VAE and scheduler around the pruned
    UNet (copied in as unet/), which `diffprune export` turns into a pipeline export (benchmarks/gpu_check.py
    uses it too, with tiny-sd in its --smoke mode)."""
    from diffprune.export.pipeline import SD_SCHEDULER
    from diffprune.latents import VAE_SETUPS, build_vae
    from diffprune.text import build_text_encoder

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tokenizer, text_model), = build_text_encoder(arch).parts
    text_model.save_pretrained(str(tmp / "text_encoder"))
    tokenizer.save(tmp / "tokenizer")
    build_vae(VAE_SETUPS[arch]).save_pretrained(str(tmp / "vae"))
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER, indent=1))
    shutil.copytree(pruned_unet, tmp / "unet")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}, indent=1))
    tmp.rename(out)


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
    if not (work / "unet-pruned").is_dir():
        diffprune("prune", "arch:sd15", work / "unet-pruned", "--method", "magnitude", "--target-macs", 0.5, "--quiet")
    if not (work / "pruned-pipeline").is_dir():
        write_pipeline_folder(work / "unet-pruned", work / "pruned-pipeline")
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
