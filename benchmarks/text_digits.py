"""Evidence for text-conditioned Diff-Pruning on a model trained here: the text-conditioned digits model.

    python benchmarks/text_digits.py prepare /tmp/digits-captioned   # 9,000 digits as PNG + captions (JSONL)
    python benchmarks/text_digits.py train /tmp/digits-captioned      # -> diffprune/assets/digits-text (pipeline)
    python benchmarks/text_digits.py evaluate /tmp/digits-captioned   # -> benchmarks/results/text_digits.{md,json}

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


def train(folder: Path, out: Path = ASSET, **overrides) -> None:
    from diffprune.finetune import finetune

    settings = {**TRAIN, **overrides}
    report = finetune("arch:digits-text", out, data=str(folder / "pairs.jsonl"), precompute=True, seed=0,
                      device="cpu", overwrite=True, checkpoint_every=500, checkpoint_dir="/tmp/digits-text.ckpt",
                      **settings)
    print(f"trained {settings['steps']} steps in {report.seconds / 60:.1f} min, final loss {report.final_loss:.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prepare", "train", "evaluate"])
    parser.add_argument("folder", type=Path, help="the captioned digits folder (written by prepare)")
    parser.add_argument("--steps", type=int, default=TRAIN["steps"])
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        print(prepare(args.folder))
    elif args.stage == "train":
        train(args.folder, steps=args.steps)
    else:
        evaluate(args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
