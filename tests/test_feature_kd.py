"""Feature distillation at the UNet's block outputs (BK-SDM) through learned 1x1 maps (FitNets)."""

import json
import os

import numpy as np
import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.training.checkpoints import latest_checkpoint
from diffprune.training.finetune import finetune

FAST = dict(data="builtin:digits", batch_size=4, num_images=32, warmup_steps=1, log_every=1, progress=False)


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory):
    from diffprune.sources.unet import build_unet

    model, report = diffprune.prune(build_unet("tiny"), method="magnitude", ratio=0.5, progress=False)
    return diffprune.save(model, tmp_path_factory.mktemp("p") / "pruned", info={"pruning": report.to_dict()})


def test_maps_go_from_the_students_widths_to_the_teachers(pruned_tiny):
    from diffprune.training import feature_kd
    from diffprune.sources.unet import build_unet

    student, dense = diffprune.load(pruned_tiny), build_unet("tiny")
    assert feature_kd.widths(student) == [16, 32, 32, 32, 16] and feature_kd.widths(dense) == [32, 64, 64, 64, 32]
    maps = feature_kd.projections(student, dense).maps
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in maps] == [
        (16, 32, (1, 1)), (32, 64, (1, 1)), (32, 64, (1, 1)), (32, 64, (1, 1)), (16, 32, (1, 1))]
    assert all(isinstance(m, torch.nn.Identity) for m in feature_kd.projections(dense, dense).maps)  # BK-SDM's case
    again = feature_kd.projections(student, dense).maps  # seeded: every process builds the same maps
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(maps, again))


def test_feature_loss_is_positive_and_falls(pruned_tiny, tmp_path):
    from diffprune.sources.loader import load_source

    student = load_source(pruned_tiny)[0]
    report = finetune(student, tmp_path / "fkd", steps=8, lr=1e-3, ema_decay=0, teacher="arch:tiny",
                      feature_kd_weight=1.0, **FAST)
    feature = [row[3] for row in report.losses]  # [step, loss, lr, feature_kd]
    assert all(f > 0 for f in feature) and all(np.isfinite(feature))
    assert np.mean(feature[-3:]) < 0.9 * np.mean(feature[:2]), feature
    assert all(not m._forward_hooks for m in student.modules())  # the taps are gone from the caller's model
    out = tmp_path / "fkd"
    assert (out / "loss.csv").read_text().splitlines()[0] == "step,loss,lr,feature_kd"
    info = json.loads((out / "pruning.json").read_text())["finetune"]
    assert info["feature_kd_weight"] == 1.0 and len(info["feature_kd"]["projected"]) == 5
    assert diffprune.load(out).state_dict().keys() == diffprune.load(pruned_tiny).state_dict().keys()  # maps not saved


# Losses of this run at commit 8a15e70, before feature distillation existed (weights sha256 804f9391...):
# with feature_kd_weight 0 nothing of it runs, so the numbers stay the same.
BEFORE = [1.223082, 1.254043, 1.218724]


def test_weight_zero_trains_as_before(pruned_tiny, tmp_path):
    report = finetune(pruned_tiny, tmp_path / "kd", steps=3, teacher="arch:tiny", kd_weight=1.0,
                      feature_kd_weight=0.0, **{**FAST, "warmup_steps": 2})
    np.testing.assert_allclose([row[1] for row in report.losses], BEFORE, rtol=0, atol=2e-6)
    assert all(len(row) == 3 for row in report.losses)
    default = finetune(pruned_tiny, tmp_path / "default", steps=3, teacher="arch:tiny", kd_weight=1.0,
                       **{**FAST, "warmup_steps": 2})
    a, b = diffprune.load(tmp_path / "kd").state_dict(), diffprune.load(tmp_path / "default").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_feature_distillation_ends_with_the_same_weights(pruned_tiny, tmp_path):
    common = dict(steps=4, checkpoint_every=2, ema_decay=0.99, teacher="arch:tiny", feature_kd_weight=0.5, **FAST)
    finetune(pruned_tiny, tmp_path / "straight", **common)
    with pytest.raises(ZeroDivisionError):
        finetune(pruned_tiny, tmp_path / "crashed", callback=lambda s, _: 1 / 0 if s == 3 else None, **common)
    assert "feature_kd.safetensors" in os.listdir(latest_checkpoint(tmp_path / "crashed.ckpt"))
    finetune(pruned_tiny, tmp_path / "crashed", resume=True, **common)
    a, b = diffprune.load(tmp_path / "straight").state_dict(), diffprune.load(tmp_path / "crashed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(feature_kd_weight=1.0), "no teacher was given"),
    (dict(feature_kd_weight=-1.0, teacher="arch:tiny"), "feature_kd_weight -1.0 must be >= 0"),
])
def test_bad_feature_kd_options(pruned_tiny, tmp_path, kwargs, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        finetune(pruned_tiny, tmp_path / "x", steps=1, **{**FAST, **kwargs})
