"""Decoder pruning evidence (issue 24, item 1): a tiny AutoencoderKL trained here on the embedded digits, its decoder
pruned to half its MACs and distilled from the dense decoder; reconstruction SSIM against the dense decoder over
256 held-out digits, with the steps and time it took.

Two stages (train, then prune + distil + score), run together alone on the machine so that every time is
measured without other work (each stage is also runnable by itself):

    # 1. train the autoencoder, writes $DECODER_DIGITS_WORK/pipeline (default /tmp/diffprune_decoder_digits)
    # 2. prune (diffprune prune --components decoder) + distil (diffprune finetune --component decoder) + score;
    #    writes benchmarks/results/decoder/decoder_digits.{json,md}
    OMP_NUM_THREADS=2 timeout 290 bash -c "python benchmarks/decoder_digits.py train --steps 300 \
        && python benchmarks/decoder_digits.py prune --steps 300"

The pipeline folder holds the autoencoder in vae/ and, in unet/, a UNet2DModel over its 4x7x7 latents with random
weights: a placeholder that fixes the latent size the decoder's MACs are counted at (and that makes the folder a
pipeline the CLI prunes); nothing here samples from it. Digits 0..9743 train, 9744..9999 (256) are held out.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffprune
from diffprune.runtime.host import cpu_name as cpu_model  # the one reader of the CPU's name

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "decoder"
WORK = Path(os.environ.get("DECODER_DIGITS_WORK", "/tmp/diffprune_decoder_digits"))  # models; not committed
HELD_OUT = 256
AUTOENCODER = dict(in_channels=1, out_channels=1, latent_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
                   down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                   norm_num_groups=8, sample_size=28, scaling_factor=1.0)
KL_WEIGHT = 1e-6  # Stable Diffusion's VAE weighs its KL term this lightly: the latents stay near-deterministic


def digits():
    data = np.load(Path(diffprune.__file__).parent / "assets" / "digits.npz")
    images = torch.from_numpy(data["images"]).float().div(127.5).sub(1).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
    return images[:-HELD_OUT], images[-HELD_OUT:]


def train(args):
    """Train the autoencoder (reconstruction L2 + KL_WEIGHT x KL) and write it as a pipeline folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    train_images, _ = digits()
    vae = AutoencoderKL(**AUTOENCODER)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        x = train_images[torch.randint(0, len(train_images), (args.batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"train step {step + 1}/{args.steps}: loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    vae.eval()
    folder = WORK / "pipeline"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    vae.save_pretrained(folder / "vae")
    torch.manual_seed(0)
    UNet2DModel(sample_size=7, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8).save_pretrained(folder / "unet")
    DDIMScheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    (WORK / "train.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "final_loss": loss.item(),
        "seconds": round(time.perf_counter() - started, 1), "autoencoder": AUTOENCODER,
        "kl_weight": KL_WEIGHT, "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {folder}")


def _decode_images(vae, latents) -> np.ndarray:
    with torch.no_grad():
        x = vae.decode(latents).sample  # (N, 1, 28, 28) in about [-1, 1]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (N, 28, 28, 1) uint8


def _latency_ms(vae, latents, runs: int = 20) -> dict:
    with torch.no_grad():
        for _ in range(3):  # warm-up
            vae.decode(latents)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            vae.decode(latents)
            times.append(1e3 * (time.perf_counter() - t))
    return {"median_ms": round(float(np.median(times)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3)}


def _cli(argv) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffprune", *argv], check=True)
    return time.perf_counter() - started


def prune(args):
    """diffprune prune --components decoder --target-macs 0.5, then finetune --component decoder; score."""
    from diffprune.evaluation.metrics import psnr, ssim
    from diffprune.pruning.decoder import count_decoder
    from diffprune.sources.vae import load_vae

    dense_folder = WORK / "pipeline"
    pruned, tuned = WORK / "pruned", WORK / "distilled"
    common = ["--overwrite", "--quiet"]
    prune_s = _cli(["prune", str(dense_folder), str(pruned), "--components", "decoder", "--target-macs", "0.5",
                    "--method", args.method, "--data", str(WORK / "train.npy"), "--num-images", str(args.calibration),
                    *common])
    finetune_s = _cli(["finetune", str(pruned), str(tuned), "--component", "decoder", "--teacher", str(dense_folder),
                       "--data", str(WORK / "train.npy"), "--num-images", str(args.distill_images), "--steps", str(args.steps), "--batch-size", str(args.batch),
                       "--lr", str(args.lr), "--warmup-steps", "20", "--ema-decay", "0.999", "--checkpoint-minutes",
                       "0", "--checkpoint-every", "0", *common])
    dense, before, after = load_vae(dense_folder), load_vae(pruned), load_vae(tuned)
    _, held_out = digits()
    with torch.no_grad():
        latents = dense.encode(held_out).latent_dist.mean  # (256, 4, 7, 7)
    reference = _decode_images(dense, latents)
    originals = ((held_out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows = {}
    for name, vae in (("dense", dense), ("pruned", before), ("pruned + distilled", after)):
        images = _decode_images(vae, latents)
        macs, params = count_decoder(vae, (7, 7))
        rows[name] = {"macs": macs, "params": params,
                      "ssim_vs_dense": float(ssim(images, reference).mean()),
                      "psnr_vs_dense": float(np.minimum(psnr(images, reference), 100).mean()),
                      "ssim_vs_original": float(ssim(images, originals).mean()),
                      "latency_batch1": _latency_ms(vae, latents[:1]),
                      "latency_batch64": _latency_ms(vae, latents[:64], runs=10)}
    finetune_record = json.loads((tuned / "vae" / "pruning.json").read_text())["finetune"]
    result = {
        "host_cpu": cpu_model(), "threads": torch.get_num_threads(), "held_out_digits": HELD_OUT,
        "train": json.loads((WORK / "train.json").read_text()),
        "prune": {"method": args.method, "target_macs": 0.5, "calibration_images": args.calibration,
                  "seconds": round(prune_s, 1)},
        "distill": {"steps": args.steps, "images": args.distill_images, "batch": args.batch, "lr": args.lr, "pixel_loss": "l2",
                    "seconds": round(finetune_s, 1), "steps_per_s": finetune_record["report"]["steps_per_s"],
                    "final_loss": finetune_record["report"]["final_loss"]},
        "rows": rows, "command": " ".join(sys.argv), "versions": {"torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decoder_digits.json").write_text(json.dumps(result, indent=1))
    lines = [f"Decoder pruning on the digits autoencoder ({cpu_model()}, {torch.get_num_threads()} threads; "
             f"`{result['command']}`)", "",
             f"Autoencoder trained {result['train']['steps']} steps (batch {result['train']['batch']}); decoder pruned "
             f"with {args.method} to half its MACs in {prune_s:.1f} s, distilled {args.steps} steps (batch {args.batch}, "
             f"pixel L2 vs the dense decoder) in {finetune_s:.1f} s. {HELD_OUT} held-out digits.", "",
             "| decoder | MACs (M) | params (k) | SSIM vs dense | PSNR vs dense (dB) | SSIM vs original | batch 1 (ms) | batch 64 (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e3:.1f} | {r['ssim_vs_dense']:.4f} | "
                     f"{r['psnr_vs_dense']:.2f} | {r['ssim_vs_original']:.4f} | {r['latency_batch1']['median_ms']:.2f} | "
                     f"{r['latency_batch64']['median_ms']:.1f} |")
    (RESULTS / "decoder_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "prune"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (train: 400, prune: 400 distillation)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (train: 2e-3, prune: 5e-4)")
    parser.add_argument("--method", default="diff-pruning")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--distill-images", type=int, default=2048, help="training digits whose latents are distilled on")
    parser.add_argument("--calibration", type=int, default=64, help="calibration images for the pruning gradients")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.stage == "train":
        args.steps, args.lr = args.steps or 400, args.lr or 2e-3
        train(args)
        np.save(WORK / "train.npy", np.load(Path(diffprune.__file__).parent / "assets" / "digits.npz")["images"][:-HELD_OUT])
    else:
        args.steps, args.lr = args.steps or 400, args.lr or 5e-4
        prune(args)


if __name__ == "__main__":
    main()
