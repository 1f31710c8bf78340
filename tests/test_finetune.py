"""Fine-tuning: EMA output, exact resume, distillation, two-process training, bad options."""

import json
import os
import subprocess
import sys

import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.training.checkpoints import latest_checkpoint
from diffprune.training.finetune import finetune

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
    # The whole loss history, not only the steps after the resume; both counts in the report.
    assert (tmp_path / "crashed" / "loss.csv").read_text() == (tmp_path / "straight" / "loss.csv").read_text()
    assert report.steps == 6 and report.steps_this_run == 2
    # Once the model is written its checkpoints are gone.
    assert not (tmp_path / "crashed.ckpt").exists() and not (tmp_path / "straight.ckpt").exists()


def test_checkpoints_are_safetensors_and_json_only(pruned_tiny, tmp_path):
    def stop(step, loss):  # a finished run deletes its checkpoints: look at those of a stopped one
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(pruned_tiny, tmp_path / "ft", steps=4, checkpoint_every=2, callback=stop, **FAST)
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


def test_a_time_based_checkpoint_leaves_something_to_resume(pruned_tiny, tmp_path):
    # With --checkpoint-every 500 a run stopped in its first minutes had nothing to resume.
    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    common = dict(steps=5, checkpoint_every=0, **FAST)
    with pytest.raises(KeyboardInterrupt):
        finetune(pruned_tiny, tmp_path / "ft", checkpoint_minutes=1e-9, callback=stop, **common)
    assert latest_checkpoint(tmp_path / "ft.ckpt").name == "step-00000003"
    with pytest.raises(KeyboardInterrupt):
        finetune(pruned_tiny, tmp_path / "none", checkpoint_minutes=0, callback=stop, **common)
    assert latest_checkpoint(tmp_path / "none.ckpt") is None
    with pytest.raises(DiffPruneError, match="checkpoint_minutes -1 must be >= 0"):
        finetune(pruned_tiny, tmp_path / "bad", checkpoint_minutes=-1, **common)


def test_an_interrupted_cli_run_says_how_to_resume_and_the_resumed_run_says_what_it_did(pruned_tiny, tmp_path,
                                                                                        monkeypatch, capsys):
    import shlex

    import diffprune.training.finetune
    from diffprune.cli import main

    real = diffprune.training.finetune.finetune

    def ctrl_c_at_step_3(*args, **kwargs):
        def stop(step, loss):
            if step == 3:
                raise KeyboardInterrupt
        return real(*args, callback=stop, **kwargs)

    out = tmp_path / "ft"
    argv = ["finetune", str(pruned_tiny), str(out), "--steps", "4", "--batch-size", "4", "--num-images", "32",
            "--warmup-steps", "2", "--log-every", "1", "--checkpoint-every", "2", "--device", "cpu", "--quiet"]
    monkeypatch.setattr(diffprune.training.finetune, "finetune", ctrl_c_at_step_3)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"the checkpoint of step 2 of 4 is kept in {out}.ckpt" in err
    command = err.strip().splitlines()[-1].strip()
    assert command == "diffprune " + shlex.join(argv + ["--resume"])
    assert not out.exists() and (tmp_path / "ft.ckpt").is_dir()

    monkeypatch.setattr(diffprune.training.finetune, "finetune", real)
    assert main(shlex.split(command)[1:]) == 0
    captured = capsys.readouterr()
    assert f"fine-tune: resuming from step 2 of 4 (checkpoint {out}.ckpt/step-00000002); 2 steps to go" in captured.err
    assert captured.out.startswith("fine-tuned 4 steps (2 in this run, resumed from step 2) in ")
    assert [row.split(",")[0] for row in (out / "loss.csv").read_text().splitlines()] == ["step", "1", "2", "3", "4"]
    assert not (tmp_path / "ft.ckpt").exists()


def test_a_guidance_scale_without_prompted_samples_is_refused(pruned_tiny, tmp_path):
    # --guidance-scale sets how generate:N draws text models' samples; with image data it would do nothing.
    with pytest.raises(DiffPruneError, match="--guidance-scale 1.5 applies to samples drawn with prompts"):
        finetune(pruned_tiny, tmp_path / "x", **{**FAST, "steps": 2, "guidance_scale": 1.5})
    assert not (tmp_path / "x").exists()
