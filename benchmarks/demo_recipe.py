"""Fine-tuning recipes for the demo's pruned model, side by side (issue 16).

Takes a dense model and its pruned copy (e.g. a demo folder's dense/ and pruned/), fine-tunes the
pruned one with each recipe, samples dense and every fine-tuned model from the same noise (DDIM,
PyTorch) and reports SSIM against the dense images and the digits classifier's confidence.

    python benchmarks/demo_recipe.py diffprune-demo/dense diffprune-demo/pruned \
        --recipe steps=200,kd=1,lr=2e-4 --recipe steps=400,kd=10,lr=1e-3 --out benchmarks/results/demo_recipe

Each --recipe is key=value pairs: steps, kd (distillation weight), lr, batch, ema, warmup, data, resize.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULTS = {"steps": 200, "kd": 1.0, "lr": 2e-4, "batch": 32, "ema": 0.995, "warmup": None, "data": "builtin:digits",
            "resize": "bilinear", "schedule": "constant_with_warmup"}


def parse_recipe(text: str) -> dict:
    recipe = dict(DEFAULTS)
    for pair in filter(None, text.split(",")):
        key, value = pair.split("=", 1)
        if key not in DEFAULTS:
            sys.exit(f"unknown recipe key {key!r}; allowed: {', '.join(DEFAULTS)}")
        recipe[key] = value if key in ("data", "resize", "schedule") else float(value)
    recipe["steps"], recipe["batch"] = int(recipe["steps"]), int(recipe["batch"])
    if recipe["warmup"] is None:
        recipe["warmup"] = min(50, max(1, recipe["steps"] // 5))
    return recipe


def sample(folder, n: int, steps: int, seed: int) -> np.ndarray:
    import torch

    from diffprune.sources.loader import load_source
    from diffprune.data.generate import generate

    model, scheduler_config, _ = load_source(str(folder))
    torch.manual_seed(seed)
    x = generate(model.eval(), scheduler_config, n, seed=seed, steps=steps, batch=64, progress=False)  # (N, C, H, W) in [-1, 1]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dense")
    p.add_argument("pruned")
    p.add_argument("--recipe", action="append", default=[])
    p.add_argument("--evaluate", action="append", default=[], metavar="LABEL=FOLDER",
                   help="also score a model fine-tuned elsewhere (e.g. a demo's finetuned/)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/demo_recipe")
    args = p.parse_args()

    from diffprune.training.finetune import finetune
    from diffprune.evaluation.metrics import consistency, digit_confidence

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = sample(args.dense, args.n, args.sample_steps, args.seed)
    rows = [{"recipe": "dense", **digit_confidence(dense)}]
    untuned = sample(args.pruned, args.n, args.sample_steps, args.seed)
    rows.append({"recipe": "pruned, not fine-tuned", "ssim": consistency(untuned, dense)["ssim"], **digit_confidence(untuned)})
    print(json.dumps(rows, indent=None), flush=True)
    for item in args.evaluate:
        label, folder = item.split("=", 1)
        images = sample(folder, args.n, args.sample_steps, args.seed)
        q = consistency(images, dense)
        rows.append({"recipe": label, "ssim": q["ssim"], "psnr_db": q["psnr_db"], **digit_confidence(images)})
        print(json.dumps(rows[-1]), flush=True)
    for text in args.recipe:
        r = parse_recipe(text)
        name = "-".join(f"{k}{v}" for k, v in r.items() if DEFAULTS.get(k) != v) or "default"
        folder = out / name.replace("/", "_")
        started = time.perf_counter()
        if not folder.exists():
            finetune(args.pruned, folder, data=r["data"], steps=r["steps"], batch_size=r["batch"], lr=r["lr"],
                     warmup_steps=int(r["warmup"]), lr_schedule=r["schedule"], ema_decay=r["ema"], teacher=args.dense,
                     kd_weight=r["kd"], checkpoint_every=0, checkpoint_dir=out / "ckpt", seed=args.seed,
                     device="cpu", progress=False, resize=r["resize"])
        seconds = time.perf_counter() - started
        images = sample(folder, args.n, args.sample_steps, args.seed)
        q = consistency(images, dense)
        rows.append({"recipe": text, "ssim": q["ssim"], "psnr_db": q["psnr_db"], **digit_confidence(images),
                     "finetune_s": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"n": args.n, "sample_steps": args.sample_steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
