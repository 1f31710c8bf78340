"""Train the digits classifier that judges generated digits: its 64-d penultimate layer is the feature
space of FID for digits (`--features builtin:digits-features`), its logits give class accuracy.

Trained on the first 9,000 images of the embedded MNIST subset, tested on the last 1,000 (held out).
Writes diffprune/assets/digits-classifier/{model.onnx,card.json}. About 1 minute on 2 CPU cores:

    python benchmarks/train_digits_classifier.py
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "diffprune" / "assets" / "digits-classifier"


class DigitsClassifier(nn.Module):
    """(N, 1, 28, 28) in [0, 1] -> features (N, 64), logits (N, 10)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


def shifted(x: torch.Tensor, generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels: generated digits are not centred as exactly as MNIST's."""
    dx, dy = (torch.randint(-2, 3, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from diffprune.data.images import ASSETS

    with np.load(ASSETS / "digits.npz", allow_pickle=False) as z:
        images = torch.from_numpy(z["images"]).float().div(255).unsqueeze(1)  # (10000, 1, 28, 28)
        labels = torch.from_numpy(z["labels"].astype(np.int64))
    train_x, train_y, test_x, test_y = images[:9000], labels[:9000], images[9000:], labels[9000:]
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * (9000 // 128 + 1))
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(9000, generator=g)
        for start in range(0, 9000, 128):
            idx = order[start:start + 128]
            _, logits = model(shifted(train_x[idx], g))
            loss = nn.functional.cross_entropy(logits, train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x)[1].argmax(1) == test_y).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out accuracy {accuracy:.4f}")
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (test_x[:2],), str(args.out / "model.onnx"), input_names=["images"],
                      output_names=["features", "logits"], dynamic_axes={"images": {0: "N"}, "features": {0: "N"},
                                                                          "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    card = {
        "what": "digits classifier: features (64-d penultimate layer) for FID on digits, logits for class accuracy",
        "input": "images float32 (N, 1, 28, 28) in [0, 1]", "outputs": {"features": "(N, 64)", "logits": "(N, 10)"},
        "data": "embedded MNIST subset (diffprune/assets/digits.npz, MIT): images 0-8999 train, 9000-9999 held out",
        "held_out_accuracy": round(accuracy, 4), "epochs": args.epochs, "train_seconds": round(seconds, 1),
        "augmentation": "random shifts of up to 2 pixels", "torch": torch.__version__,
        "command": "python benchmarks/train_digits_classifier.py",
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {args.out}/model.onnx ({(args.out / 'model.onnx').stat().st_size / 1e3:.0f} kB), card.json: "
          f"held-out accuracy {accuracy:.4f}, {seconds:.0f} s")


if __name__ == "__main__":
    main()
