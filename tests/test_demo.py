"""The demo in a reduced form (tiny model, few steps): files, report fields, grid size, stage reuse."""

import json

import numpy as np
from PIL import Image

from diffprune.cli import main

ARGS = ["--model", "arch:tiny", "--finetune-steps", "2", "--steps", "3", "--n", "4", "--bench-runs", "1", "--bench-batch", "1,2",
        "--calibration-images", "4", "--max-timesteps", "3", "--quiet"]


def test_demo_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "pruned + fine-tuned" in printed and "SSIM vs dense" in printed
    # One row per model, the headline (largest) batch first, batch 1 beside it, the backend named.
    header = next(line for line in printed.splitlines() if line.startswith("| model"))
    assert header.index("batch 2: ms / image") < header.index("batch 1: ms / image")
    assert "digits classified" in header and "| real digits (held out) |" in printed
    for name in ("dense", "pruned", "finetuned", "dense-onnx", "pruned-onnx", "bench", "grid.png", "report.json", "summary.md"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["macs"] <= 0.5 * report["dense"]["macs"]
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert set(report["latency"]) == {"1", "2"}
    for lat in report["latency"].values():
        assert lat["dense_ms_per_image"] > 0 and lat["pruned_ms_per_image"] > 0
        assert lat["speedup"] > 0 and lat["torch_eager_dense_ms_per_image"] > 0
    assert -1 <= report["pruned"]["ssim_vs_dense"] <= 1 and report["pruned"]["timesteps_used"] == 0
    assert report["pruned"]["method"] == "magnitude"  # the default criterion: no gradients, no timesteps
    assert report["pruned"]["n"] == 4 and report["headline_batch"] == 2
    assert report["backend_detail"].startswith(report["backend"])
    # The digits classifier's verdict on both models' samples, beside real held-out digits (pinned).
    digits = report["digits"]
    assert digits["real_held_out"]["confident_share"] == 0.928 and digits["real_held_out"]["n"] == 1000
    assert digits["dense"]["n"] == digits["pruned"]["n"] == 4
    assert report["validation"]["dense"] <= 1e-4 and report["validation"]["pruned"] <= 1e-4
    assert report["memory_mib"]["pruned-onnx"]["peak_mib"] > 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * (16 + 2) + 2, 4 * (16 + 2) + 2)  # 2 rows x 4 images of 16x16, 2-px padding
    # A re-run reuses every finished stage.
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    again = json.loads((out / "report.json").read_text())
    assert all(v == "reused" for v in again["stages"].values()), again["stages"]
