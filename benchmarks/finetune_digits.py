"""Fine-tuning benchmark on the shipped reference digits DDPM (issue: does diff-pruning beat the others
at an equal fine-tuning budget?).

Prunes the reference model to half its MACs with each method, fine-tunes each for the same number of
steps with and without distillation from the dense model, then generates 64 images per model from the
same noise (DDIM, 50 steps) and scores them against the dense model's: SSIM and PSNR (the paper's
consistency), plus the final training loss. Writes a sample grid per method (dense row on top).

    python benchmarks/finetune_digits.py --steps 300      # writes benchmarks/results/finetune_digits.{json,md,png}
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffprune
from diffprune.training.finetune import finetune
from diffprune.evaluation.metrics import consistency
from diffprune.sources.loader import load_source
from diffprune.sources.unet import versions
from diffprune.runtime.image import grid, save_png
from diffprune.runtime.sampler import to_uint8
from diffprune.data.generate import generate

METHODS = ["diff-pruning", "taylor", "magnitude", "random", "reinit"]
REFERENCE = Path(diffprune.__file__).parent / "assets" / "digits-ddpm"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per model")
    parser.add_argument("--images", type=int, default=64, help="images generated per model for SSIM/PSNR")
    parser.add_argument("--calibration", type=int, default=64, help="calibration images for the gradient criteria")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "finetune_digits"))
    args = parser.parse_args()
    torch.manual_seed(0)
    dense, scheduler_config, _ = load_source(str(REFERENCE))
    dense_steps = json.loads((REFERENCE / "finetune.json").read_text())["steps"]
    noise = torch.randn((args.images, 1, 28, 28), generator=torch.Generator().manual_seed(1234))
    dense_images = to_uint8(generate(dense, scheduler_config, args.images, noise=noise, progress=False).numpy())
    rows, grids = [], {"dense": dense_images[:16]}
    work = Path(tempfile.mkdtemp(prefix="diffprune-ft-"))
    for method in METHODS:
        started = time.perf_counter()
        pruned, report = diffprune.prune(dense, method=method, target_macs=0.5, data="builtin:digits",
                                         num_images=args.calibration, scheduler_config=scheduler_config, progress=False)
        prune_s = time.perf_counter() - started
        folder = diffprune.save(pruned, work / f"{method}", info={"pruning": report.to_dict()},
                                scheduler_config=scheduler_config)
        for kd in (0.0, 1.0):
            out = work / f"{method}-kd{kd:g}"
            ft = finetune(folder, out, data="builtin:digits", steps=args.steps, batch_size=64, lr=2e-4,
                          warmup_steps=min(50, args.steps // 5), ema_decay=0.995, checkpoint_every=0,
                          teacher=str(REFERENCE) if kd else None, kd_weight=kd, progress=False)
            model, _, _ = load_source(str(out))
            images = to_uint8(generate(model, scheduler_config, args.images, noise=noise, progress=False).numpy())
            c = consistency(images, dense_images)
            rows.append({"method": method, "kd_weight": kd, "macs_kept": round(report.macs_after / report.macs_before, 3),
                         "params_M": round(report.params_after / 1e6, 3), "timesteps_used": len(report.timesteps_used),
                         "prune_s": round(prune_s, 1), "finetune_steps": args.steps,
                         "finetune_share_of_dense": round(args.steps / dense_steps, 4),
                         "final_loss": round(ft.final_loss, 4),
                         "mean_loss_last_20pct": round(float(np.mean([l[1] for l in ft.losses[-max(1, len(ft.losses) // 5):]])), 4),
                         "ssim": round(c["ssim"], 4), "psnr_db": round(c["psnr_db"], 2), "finetune_s": round(ft.seconds, 1)})
            print(rows[-1], flush=True)
            if kd:
                grids[method] = images[:16]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one row per model, 16 images each, dense on top
    names = list(grids)
    sheet = grid(np.concatenate([grids[n] for n in names]), rows=len(names))
    save_png(out.with_suffix(".png"), sheet)
    result = {"command": f"python benchmarks/finetune_digits.py --steps {args.steps} --images {args.images} --calibration {args.calibration}",
              "reference": str(REFERENCE.name), "dense_training_steps": dense_steps, "rows": rows,
              "grid_rows": names, "versions": versions()}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Fine-tuning the pruned reference digits model (half the MACs), {args.steps} steps each\n",
             f"Command: `{result['command']}`  ",
             f"{args.steps} steps = {args.steps / dense_steps:.1%} of the dense model's {dense_steps} training steps. "
             f"SSIM/PSNR: {args.images} images from the same noise as the dense model's (DDIM, 50 steps).\n",
             "| method | distillation | MACs kept | params (M) | timesteps used | final loss | loss (last 20 %) | SSIM vs dense | PSNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {'kd 1.0' if r['kd_weight'] else 'no'} | {r['macs_kept']:.1%} | {r['params_M']} | "
                     f"{r['timesteps_used'] or '-'} | {r['final_loss']} | {r['mean_loss_last_20pct']} | {r['ssim']} | {r['psnr_db']} |")
    lines.append(f"\nGrid (`{out.with_suffix('.png').name}`): rows are {', '.join(names)} (distilled models), same noise per column.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
