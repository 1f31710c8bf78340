"""Evidence for text-conditioned Diff-Pruning on a model trained here: the text-conditioned digits model.

    python benchmarks/text_digits.py prepare /tmp/digits-captioned   # 9,000 digits as PNG + captions (JSONL)
    python benchmarks/text_digits.py train /tmp/digits-captioned      # -> diffprune/assets/digits-text (pipeline)
    python benchmarks/text_digits.py evaluate /tmp/digits-captioned   # -> benchmarks/results/text_digits.{md,json}
    python benchmarks/text_digits.py extend /tmp/digits-captioned --share 0.3   # + diff-pruning fine-tuned 30 %

The model (``arch:digits-text``): a 28x28 ``UNet2DConditionModel`` with cross-attention at 14x14 and 7x7 to a
tiny frozen CLIP text encoder (random weights, real CLIP tokens), trained with diffprune's own trainer on
the first 9,000 of the embedded MNIST digits, captioned from their labels ("a handwritten digit seven",
"the number 7", ...), caption dropout 0.1 so that classifier-free guidance works. The digits classifier
that judges it (``builtin:digits-features``, benchmarks/train_digits_classifier.py) was trained on the
same 9,000 and holds out the last 1,000 (97.5 % accuracy there), which are the FID reference.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "diffprune" / "assets" / "digits-text"
RESULTS = ROOT / "benchmarks" / "results"
WORDS = "zero one two three four five six seven eight nine".split()
TEMPLATES = ("a handwritten digit {word}", "the number {digit}", "a handwritten {word}", "the digit {word}")
# The pruned models' recovery: the demo's recipe (benchmarks/README.md, "The demo's settings"), distillation-weighted.
# Classifier-free guidance for this model, chosen on the dense model by `evaluate`'s sweep (scales 1-7.5, 200
# images each; benchmarks/results/text_digits.md): a pixel-space model whose unconditional branch saw 10 % of the
# captions is pushed off the digit manifold by SD's 7.5 (prompt accuracy 1 %); 1.5 reads best.
GUIDANCE = 1.5
SWEEP = (1.0, 1.5, 2.0, 3.0, 7.5)
RECOVER = dict(lr=1e-3, warmup_steps=30, ema_decay=0.995, kd_weight=10.0)
TRAIN = dict(steps=3000, batch_size=32, lr=5e-4, warmup_steps=200, ema_decay=0.999, caption_dropout=0.1)


def caption(label: int, k: int) -> str:
    return TEMPLATES[k % len(TEMPLATES)].format(word=WORDS[label], digit=label)


def prepare(folder: Path, count: int = 9000) -> Path:
    """The first ``count`` digits as PNGs and pairs.jsonl (image, caption, label), captions cycling templates."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with np.load(ROOT / "diffprune" / "assets" / "digits.npz") as z:
        images, labels = z["images"][:count], z["labels"][:count]
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
        rows.append({"image": f"{i:05d}.png", "text": caption(int(label), i), "label": int(label)})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl"


def train(folder: Path, out: Path = ASSET, resume: bool = False, checkpoint_dir: Path = Path("/tmp/digits-text.ckpt"),
          **overrides) -> None:
    from diffprune.training.finetune import finetune

    settings = {**TRAIN, **overrides}
    report = finetune("arch:digits-text", out, data=str(folder / "pairs.jsonl"), precompute=True, seed=0,
                      device="cpu", overwrite=True, checkpoint_every=250, checkpoint_dir=checkpoint_dir, resume=resume,
                      **settings)
    print(f"trained {settings['steps']} steps in {report.seconds / 60:.1f} min, final loss {report.final_loss:.4f}")
    write_card(out)


def write_card(asset: Path = ASSET) -> Path:
    """The shipped model's MODEL_CARD.md, from its own records (finetune.json) and, once ``evaluate`` has run,
    the dense row of benchmarks/results/text_digits.json."""
    from diffprune.sources.checkpoint import read_info

    info = read_info(asset / "unet")
    record = cfg = info["finetune"]
    versions = dict(record.get("versions", info.get("versions", {})))
    encoder_config = asset / "text_encoder" / "config.json"
    if encoder_config.is_file():
        versions.setdefault("transformers", json.loads(encoder_config.read_text()).get("transformers_version", "?"))
    quality = "Not measured yet: run `python benchmarks/text_digits.py evaluate FOLDER`."
    results = RESULTS / "text_digits.json"
    if results.is_file():
        dense = json.loads(results.read_text())["rows"][0]
        s = json.loads(results.read_text())["settings"]
        quality = (f"With classifier-free guidance {s['guidance']} and {s['sampler']} steps, {dense['n']} images for the "
                   f"prompts \"a handwritten digit zero\" ... \"nine\" ({s['prompts_per_digit']} each): the shipped digits "
                   f"classifier (`builtin:digits-features`, 97.5 % held-out accuracy) reads the prompted digit in "
                   f"{dense['prompt_accuracy']:.1%} of them; FID in its 64-d feature space against the 1,000 held-out "
                   f"real digits {dense['fid']:.2f} (`benchmarks/results/text_digits.md`, where the pruned models stand beside it).")
        sweep = json.loads(results.read_text()).get("guidance_sweep", [])
        if sweep:
            quality += ("\n\nUse guidance about 1.5, not Stable Diffusion's 7.5 (`guidance_scale=1.5` in "
                        "`diffprune.data.generate.generate`): prompt accuracy by scale, " + ", ".join(
                            f"{r['guidance']:g}: {r['prompt_accuracy']:.0%}" for r in sweep) + ". The unconditional branch "
                        "learned from 10 % of the captions only, and in pixel space a strong push away from it leaves "
                        "the digit manifold.")
    resumed = ""
    if record.get("resumed_from"):
        resumed = (f" (resumed once, from the checkpoint of step {record['resumed_from']}: exact resume, and the LR is "
                   "constant after warm-up, so this equals one uninterrupted run)")
    text = f"""# digits-text: the text-conditioned digits model shipped with diffprune

A small text-to-image diffusion pipeline in pixel space: a diffusers `UNet2DConditionModel` (architecture
`arch:digits-text`: 28x28 grey images, block widths 32/64/64, one ResNet per block, cross-attention with 2 heads
at 14x14 and 7x7, {info.get('params', 0) / 1e6:.2f}M parameters, {info.get('macs', 0) / 1e6:.0f}M MACs per forward
with 77 text tokens) conditioned on a tiny CLIP text encoder (`clip-digits-32`: 2 layers, 32 wide, seeded
random weights, frozen) fed real CLIP tokens (CLIP's BPE vocabulary, `tokenizer/`). Trained from scratch on
the first 9,000 of the MNIST digits embedded in the package (`builtin:digits`, MIT licence, see
`../digits.LICENSE`), captioned from their labels ("a handwritten digit seven", "the number 7", "a handwritten
seven", "the digit seven", cycled). The last 1,000 digits are held out: the digits classifier's test set and
the FID reference. It is the real model of the text-conditioned pruning evidence (`builtin:digits-text`).

## How it was made

    python benchmarks/text_digits.py prepare /tmp/digits-captioned
    python benchmarks/text_digits.py train /tmp/digits-captioned

- trainer: diffprune's own (`diffprune.training.finetune`), AdamW, {cfg.get('lr_schedule', 'constant_with_warmup')} LR
  {cfg.get('lr', TRAIN['lr'])} (warm-up {cfg.get('warmup_steps', TRAIN['warmup_steps'])} steps), EMA decay
  {cfg.get('ema_decay', TRAIN['ema_decay'])} (these are the EMA weights), caption dropout
  {cfg.get('caption_dropout', TRAIN['caption_dropout'])} (so classifier-free guidance works), text embeddings
  precomputed once, text encoder frozen, fp32 on CPU
- steps: {record['steps']} at batch {cfg.get('batch_size', TRAIN['batch_size'])}{resumed}
- wall time: {record['seconds']:.0f} s{' for the steps after the resume' if resumed else ''} on the project's 2-core
  x86-64 CPU ({record['steps_per_s']:.2f} steps/s; other work shared the machine part of the time)
- final training loss (epsilon MSE, one batch): {record['final_loss']:.4f}; the loss curve is in `unet/loss.csv`
- noise schedule: DDPM, 1000 linear-beta steps (`scheduler/scheduler_config.json`)
- versions: torch {versions.get('torch', '?')}, diffusers {versions.get('diffusers', '?')}, transformers {versions.get('transformers', '?')}

## Quality

{quality}

## Files

A diffusers-style pipeline folder: `model_index.json`, `unet/` (diffprune's safe format: `config.json`,
`diffusion_pytorch_model.safetensors`, `pruning.json`, `finetune.json`, `loss.csv`), `text_encoder/`
(safetensors + config), `tokenizer/`, `scheduler/`. Use it as the source `builtin:digits-text` in every command
(`diffprune prune builtin:digits-text ...`, `diffprune finetune ... --teacher builtin:digits-text`). Its UNet
exports alone (`diffprune export builtin:digits-text OUT`); the pipeline exporter does not take a pixel-space
text-to-image pipeline (no VAE) yet.
"""
    (asset / "MODEL_CARD.md").write_text(text)
    return asset / "MODEL_CARD.md"


def _load(folder):
    """A pipeline folder's UNet and text encoder (diffprune's loaders)."""
    from diffprune.sources.loader import FromSource, load_source

    unet, scheduler_config, _ = load_source(str(folder))
    return unet.eval(), scheduler_config, FromSource(str(folder), "text_encoder").load()


def sample(folder, prompts_per_digit: int, guidance: float, steps: int, seed: int = 0):
    """uint8 images (N, 28, 28, 1) for prompts "a handwritten digit <word>" (digit i % 10), with CFG; the same
    noise for every model (the seed), so models are compared image by image."""
    import torch

    from diffprune.sources.conditioning import conditioning
    from diffprune.data.generate import generate

    unet, scheduler_config, encoder = _load(folder)
    labels = [i % 10 for i in range(10 * prompts_per_digit)]
    prompts = [f"a handwritten digit {WORDS[d]}" for d in labels]
    cond = conditioning(unet)
    size = (28, 28)
    text, empty = encoder(prompts), encoder([""] * len(prompts))
    inputs = cond.inputs(len(prompts), size, text=text)
    uncond = cond.inputs(len(prompts), size, text=empty)
    noise = torch.randn((len(prompts), 1, *size), generator=torch.Generator().manual_seed(seed))
    x = generate(unet, scheduler_config, len(prompts), steps=steps, batch=100, progress=False, noise=noise,
                 inputs=inputs, uncond=uncond, guidance_scale=guidance)
    images = ((x.numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return images, np.array(labels)


def judge(images, labels, features, classifier) -> dict:
    """Prompt accuracy (the classifier's argmax equals the prompted digit) and FID against the 1,000
    held-out real digits in the classifier's 64-d feature space."""
    from diffprune.evaluation.metrics import feature_statistics, frechet_distance

    logits = classifier(images)
    with np.load(ROOT / "diffprune" / "assets" / "digits.npz") as z:
        real = z["images"][9000:][..., None]
    mu_r, sigma_r = feature_statistics(features(real))
    mu_g, sigma_g = feature_statistics(features(images))
    return {"prompt_accuracy": float((logits.argmax(1) == labels).mean()),
            "fid": float(frechet_distance(mu_g, sigma_g, mu_r, sigma_r)), "n": int(len(images))}


def evaluate(folder: Path, work: Path = Path("/tmp/text-digits-eval"), dense: Path = ASSET, target_macs: float = 0.5,
             finetune_share: float = 0.1, prompts_per_digit: int = 50, guidance: float = GUIDANCE, steps: int = 25, max_timesteps=None) -> dict:
    """Dense, pruned and pruned + fine-tuned (distilled from dense, 10 % of the training steps), for
    Diff-Pruning and magnitude, each judged by prompt accuracy and FID with CFG at the pipeline default."""
    from diffprune.sources.checkpoint import read_info, save
    from diffprune.training.finetune import finetune
    from diffprune.evaluation.metrics import OnnxFeatures
    from diffprune.sources.unet import count_macs_params
    from diffprune.pruning.pruner import prune

    work.mkdir(parents=True, exist_ok=True)
    features = OnnxFeatures("builtin:digits-features")
    classifier = OnnxFeatures("builtin:digits-features", output="logits")
    data = str(folder / "pairs.jsonl")
    trained = read_info(dense / "unet")["finetune"]["steps"]
    ft_steps = max(1, int(round(trained * finetune_share)))
    rows, started = [], time.perf_counter()

    def row(name, path, extra=None):
        unet, _, _ = _load(path)
        macs, params = count_macs_params(unet)
        images, labels = sample(path, prompts_per_digit, guidance, steps)
        record = {"model": name, "params": params, "macs": macs, **judge(images, labels, features, classifier), **(extra or {})}
        np.save(work / f"{name.replace(' ', '_').replace('+', 'and')}.npy", images[:20])
        rows.append(record)
        print(json.dumps(record), flush=True)

    sweep = []
    for scale in SWEEP:  # the dense model under each guidance scale, 20 prompts per digit
        images, labels = sample(dense, 20, scale, steps)
        sweep.append({"guidance": scale, **judge(images, labels, features, classifier)})
        print(json.dumps(sweep[-1]), flush=True)
    row("dense", dense)
    for method in ("diff-pruning", "magnitude"):
        pruned_dir, tuned_dir = work / f"{method}-pruned", work / f"{method}-finetuned"
        if not pruned_dir.exists():
            unet, scheduler_config, encoder = _load(dense)
            pruned, report = prune(unet, method=method, target_macs=target_macs, data=data, num_images=32, seed=0,
                                   max_timesteps=max_timesteps, scheduler_config=scheduler_config, progress=False, text_encoder=encoder)
            save(pruned, pruned_dir, info={"pruning": {k: v for k, v in report.to_dict().items() if k != "layer_widths"}},
                 scheduler_config=scheduler_config, pipeline=str(dense))
        row(f"{method}, pruned", pruned_dir)
        if not tuned_dir.exists():
            finetune(str(pruned_dir), tuned_dir, data=data, steps=ft_steps, batch_size=TRAIN["batch_size"], **RECOVER,
                     teacher=str(dense), precompute=True, seed=0, device="cpu", progress=False, checkpoint_every=0)
        row(f"{method}, pruned + fine-tuned", tuned_dir, {"finetune_steps": ft_steps})
    result = {"rows": rows, "guidance_sweep": sweep, "settings": {"target_macs": target_macs, "finetune_steps": ft_steps, "trained_steps": trained,
                                         "prompts_per_digit": prompts_per_digit, "guidance": guidance, "sampler": f"DDIM {steps}",
                                         **RECOVER, "seconds": round(time.perf_counter() - started)}}
    _write(result)
    return result


def extend(folder: Path, share: float, method: str = "diff-pruning", work: Path = Path("/tmp/text-digits-eval"),
           dense: Path = ASSET) -> dict:
    """One more row after ``evaluate``: ``method``'s pruned model fine-tuned for ``share`` of the training steps
    (same recipe), to show how far the 10 % budget is from closing the gap."""
    from diffprune.sources.checkpoint import read_info
    from diffprune.training.finetune import finetune
    from diffprune.evaluation.metrics import OnnxFeatures
    from diffprune.sources.unet import count_macs_params

    result = json.loads((RESULTS / "text_digits.json").read_text())
    s = result["settings"]
    steps = int(round(read_info(dense / "unet")["finetune"]["steps"] * share))
    tuned_dir = work / f"{method}-finetuned-{steps}"
    if not tuned_dir.exists():
        finetune(str(work / f"{method}-pruned"), tuned_dir, data=str(folder / "pairs.jsonl"), steps=steps,
                 batch_size=TRAIN["batch_size"], **RECOVER, teacher=str(dense), precompute=True, seed=0, device="cpu",
                 progress=False, checkpoint_every=0)
    unet, _, _ = _load(tuned_dir)
    macs, params = count_macs_params(unet)
    images, labels = sample(tuned_dir, s["prompts_per_digit"], s["guidance"], int(s["sampler"].split()[-1]))
    record = {"model": f"{method}, pruned + fine-tuned {share:.0%}", "params": params, "macs": macs,
              **judge(images, labels, OnnxFeatures("builtin:digits-features"),
                      OnnxFeatures("builtin:digits-features", output="logits")), "finetune_steps": steps}
    print(json.dumps(record), flush=True)
    result["rows"] = [r for r in result["rows"] if r["model"] != record["model"]] + [record]
    _write(result)
    return result


def _write(result: dict) -> None:
    from diffprune.sources.unet import versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    result["versions"] = versions()
    (RESULTS / "text_digits.json").write_text(json.dumps(result, indent=1))
    s = result["settings"]
    lines = [f"Text-conditioned digits (`python benchmarks/text_digits.py evaluate FOLDER`): CFG {s['guidance']}, "
             f"{s['sampler']}, {10 * s['prompts_per_digit']} images ({s['prompts_per_digit']} per digit prompt), "
             f"pruned to {s['target_macs']:.0%} of the MACs, fine-tuned {s['finetune_steps']} steps "
             f"({s['finetune_steps'] / s['trained_steps']:.0%} of the dense model's {s['trained_steps']}) with distillation from "
             f"the dense model (weight {s['kd_weight']:g}, lr {s['lr']:g}). {s['seconds'] / 60:.0f} minutes on the 2-core CPU.",
             "", "| model | params | MACs | fine-tuning steps | prompt accuracy | FID (digits features) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        steps = r.get("finetune_steps")
        tuned = f"{steps} ({steps / s['trained_steps']:.0%})" if steps else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.0f}M | {tuned} | "
                     f"{r['prompt_accuracy']:.1%} | {r['fid']:.2f} |")
    lines += ["", f"Guidance scale for the dense model ({result['guidance_sweep'][0]['n']} images per scale, same noise):", "",
              "| guidance | prompt accuracy | FID |", "|---|---|---|"]
    lines += [f"| {r['guidance']:g} | {r['prompt_accuracy']:.1%} | {r['fid']:.2f} |" for r in result["guidance_sweep"]]
    (RESULTS / "text_digits.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prepare", "train", "evaluate", "extend", "card"])
    parser.add_argument("folder", type=Path, help="the captioned digits folder (written by prepare)")
    parser.add_argument("--steps", type=int, default=TRAIN["steps"])
    parser.add_argument("--resume", action="store_true", help="train: continue from the latest checkpoint")
    parser.add_argument("--share", type=float, default=0.3, help="extend: fine-tuning steps as a share of training (default 0.3)")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/digits-text.ckpt"),
                        help="train: where checkpoints go (every 250 steps; default /tmp/digits-text.ckpt)")
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        print(prepare(args.folder))
    elif args.stage == "train":
        train(args.folder, steps=args.steps, resume=args.resume, checkpoint_dir=args.checkpoint_dir)
    elif args.stage == "card":
        print(write_card())
    elif args.stage == "extend":
        extend(args.folder, args.share)
        write_card()
    else:
        evaluate(args.folder)
        write_card()
    return 0


if __name__ == "__main__":
    sys.exit(main())
