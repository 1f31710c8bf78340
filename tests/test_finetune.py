"""Fine-tuning: EMA output, exact resume, distillation, two-process training, bad options."""

import json
import os
import subprocess
import sys

import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.training.finetune import finetune, latest_checkpoint

FAST = dict(data="builtin:digits", batch_size=4, num_images=32, warmup_steps=2, log_every=1, progress=False)


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory):
    from diffprune.sources.unet import build_unet

    model, report = diffprune.prune(build_unet("tiny"), method="magnitude", ratio=0.5, progress=False)
    return diffprune.save(model, tmp_path_factory.mktemp("p") / "pruned", info={"pruning": report.to_dict()})


def _weights(folder):
    return diffprune.load(folder).state_dict()


def test_finetune_saves_ema_model_with_logs(pruned_tiny, tmp_path):
    report = finetune(pruned_tiny, tmp_path / "ft", steps=4, ema_decay=0.999, **FAST)
    out = tmp_path / "ft"
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors", "finetune.json", "loss.csv",
                                       "pruning.json", "scheduler_config.json"]
    info = json.loads((out / "pruning.json").read_text())
    assert info["pruning"]["ratio"] == 0.5  # the pruning record carries over
    assert info["finetune"]["steps"] == 4 and info["finetune"]["mixed_precision"] == "no"
    assert info["finetune"]["resize"] == "bilinear"  # the data layout is part of what made the model
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 5
    assert report.final_loss > 0 and report.steps_per_s > 0
    tuned, before = _weights(out), _weights(pruned_tiny)
    assert tuned.keys() == before.keys()
    assert any(not torch.equal(tuned[k], before[k]) for k in tuned)


def test_resume_after_a_crash_ends_with_the_same_weights(pruned_tiny, tmp_path):
    common = dict(steps=6, checkpoint_every=2, ema_decay=0.99, **FAST)
    finetune(pruned_tiny, tmp_path / "straight", **common)

    def crash(step, loss):
        if step == 5:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(pruned_tiny, tmp_path / "crashed", callback=crash, **common)
    assert not (tmp_path / "crashed").exists()  # no half-written model
    assert latest_checkpoint(tmp_path / "crashed.ckpt").name == "step-00000004"  # one step lost at most... since 4
    report = finetune(pruned_tiny, tmp_path / "crashed", resume=True, **common)
    assert report.resumed_from == 4
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoints_are_safetensors_and_json_only(pruned_tiny, tmp_path):
    finetune(pruned_tiny, tmp_path / "ft", steps=3, checkpoint_every=2, **FAST)
    ckpt = latest_checkpoint(tmp_path / "ft.ckpt")
    assert sorted(os.listdir(ckpt)) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["rng"]["seed"] == 0


def test_distillation_from_the_dense_teacher(pruned_tiny, tmp_path):
    report = finetune(pruned_tiny, tmp_path / "kd", steps=2, teacher="arch:tiny", kd_weight=1.0, **FAST)
    info = json.loads((tmp_path / "kd" / "pruning.json").read_text())
    assert info["finetune"]["teacher"] == "arch:tiny" and info["finetune"]["kd_weight"] == 1.0
    plain = finetune(pruned_tiny, tmp_path / "plain", steps=2, **FAST)
    assert report.losses[0][1] > plain.losses[0][1]  # same batch, plus the teacher term


def test_generate_data_from_the_teacher(pruned_tiny, tmp_path):
    report = finetune(pruned_tiny, tmp_path / "gen", steps=2, teacher="arch:tiny", kd_weight=0.5,
                      **{**FAST, "data": "generate:4"})
    assert report.steps == 2


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(steps=0), "steps 0"),
    (dict(kd_weight=1.0), "no teacher was given"),
    (dict(mixed_precision="fp8"), "mixed_precision 'fp8'"),
    (dict(mixed_precision="bf16", device="cpu"), "needs a CUDA GPU"),
    (dict(lr=0), "lr 0 must be positive"),
    (dict(resume=True), "found no checkpoint"),
    (dict(resize="stretch"), "--resize 'stretch' is unknown"),
])
def test_bad_options(pruned_tiny, tmp_path, kwargs, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        finetune(pruned_tiny, tmp_path / "x", **{**FAST, "steps": 2, **kwargs})


def test_two_processes_end_with_identical_weights(pruned_tiny, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Two CPU processes over gloo: accelerate's Accelerator picks up torchrun's environment (accelerate's
    # own launcher starts multi-process runs on GPUs; on CPUs it expects MPI, which CI does not have).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diffprune",
           "finetune", str(pruned_tiny), str(out), "--steps", "3", "--batch-size", "4", "--num-images", "16",
           "--warmup-steps", "1", "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "finetune.json").read_text())
    assert report["world_size"] == 2 and report["ranks_identical"] is True
