"""Fine-tuning conditional UNets with the same trainer: class labels from the data, captions through the
frozen text encoder with caption dropout, VAE latents, distillation under the student's conditioning,
exact resume, and clear errors for data without the conditioning a model needs."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.training.checkpoints import latest_checkpoint
from diffprune.training.finetune import finetune

FAST = dict(batch_size=4, warmup_steps=1, log_every=1, progress=False)


@pytest.fixture(scope="module")
def captioned(captioned_digits):
    return captioned_digits()


@pytest.fixture(scope="module")
def parts():
    from diffprune.sources.vae import build_vae
    from diffprune.sources.text import build_text_encoder

    return dict(text_encoder=build_text_encoder("tiny-sd"), vae=build_vae("tiny"), resize="pad")  # 28x28 digits -> 32x32


@pytest.fixture(scope="module")
def pruned(pruned_conditional_folders):
    return pruned_conditional_folders


class Recorder:
    """A forward pre-hook keeping each call's conditioning inputs."""

    KEYS = ("class_labels", "encoder_hidden_states")

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append({k: kwargs[k].detach().clone() for k in self.KEYS if kwargs.get(k) is not None})


def _config(folder):
    return json.loads((Path(folder) / "config.json").read_text())


def test_class_conditional_trains_on_the_datas_labels(pruned, tmp_path):
    from diffprune.sources.loader import load_source

    student = load_source(pruned["tiny-class"])[0]
    seen = Recorder(student)
    report = finetune(student, tmp_path / "ft", data="builtin:digits", num_images=64, steps=6, lr=1e-3, ema_decay=0, **FAST)
    labels = torch.cat([c["class_labels"] for c in seen.calls])  # (6 steps * 4,)
    digits = np.load(Path(diffprune.__file__).parent / "assets/digits.npz")["labels"]
    assert labels.shape == (24,) and set(labels.tolist()) <= set(digits.tolist()) and len(set(labels.tolist())) > 3
    tuned = diffprune.load(tmp_path / "ft")
    assert _config(tmp_path / "ft") == _config(pruned["tiny-class"])  # architecture unchanged
    assert tuned.config.num_class_embeds == 10
    info = json.loads((tmp_path / "ft" / "pruning.json").read_text())
    assert info["finetune"]["conditioning"] == "class"
    assert report.losses[-1][1] < report.losses[0][1] * 1.5 and all(np.isfinite([r[1] for r in report.losses]))


def test_text_conditioned_trains_on_captions_and_saves_only_the_unet(pruned, parts, captioned, tmp_path):
    report = finetune(pruned["tiny-sd"], tmp_path / "ft", data=str(captioned), steps=4, ema_decay=0.99, **parts, **FAST)
    out = tmp_path / "ft"
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors", "finetune.json", "loss.csv",
                                       "pruning.json", "scheduler_config.json"]  # no text encoder, no VAE
    assert _config(out) == _config(pruned["tiny-sd"])
    tuned, before = diffprune.load(out).state_dict(), diffprune.load(pruned["tiny-sd"]).state_dict()
    assert tuned.keys() == before.keys() and any(not torch.equal(tuned[k], before[k]) for k in tuned)
    info = json.loads((out / "pruning.json").read_text())["finetune"]
    assert info["conditioning"] == "text" and info["caption_dropout"] == 0.1
    assert "tiny-clip-24" in info["text_encoder"]
    assert np.isfinite(report.final_loss)
    # The frozen parts stay frozen: no gradient reached them.
    assert all(p.grad is None and not p.requires_grad for p in parts["vae"].parameters())
    assert all(p.grad is None and not p.requires_grad for _, m in parts["text_encoder"].parts for p in m.parameters())


def test_caption_dropout_replaces_the_expected_fraction_by_the_empty_prompt(pruned, parts, captioned, tmp_path):
    from diffprune.sources.loader import load_source

    encoder = parts["text_encoder"]
    empty = encoder([""]).encoder_hidden_states[0]
    captions = encoder([(captioned / f"{i}.txt").read_text().strip() for i in range(8)]).encoder_hidden_states

    def dropped(p, steps, precompute):
        """Whether each caption the student saw was the empty prompt."""
        student = load_source(pruned["tiny-sd"])[0]
        seen = Recorder(student)
        finetune(student, tmp_path / f"ft{p}-{precompute}", data=str(captioned), steps=steps, caption_dropout=p,
                 precompute=precompute, ema_decay=0, checkpoint_every=0, **{**parts, **FAST, "batch_size": 8})
        states = torch.cat([c["encoder_hidden_states"] for c in seen.calls])  # (steps * 8, 77, 24)
        assert states.shape == (steps * 8, 77, 24)
        is_empty = [torch.allclose(s, empty, atol=1e-5) for s in states]
        # Every caption not dropped is the embedding of one of the data's captions.
        assert all(e or any(torch.allclose(s, c, atol=1e-5) for c in captions) for s, e in zip(states, is_empty))
        return is_empty

    assert not any(dropped(0.0, 1, True)) and all(dropped(1.0, 1, True))
    half = dropped(0.5, 2, True)
    assert 3 <= sum(half) <= 13  # Binomial(16, 0.5): outside [3, 13] with probability < 0.5 %
    # Seeded: encoding the captions every batch instead of once drops the same ones.
    assert dropped(0.5, 2, False) == half


def test_the_teacher_sees_the_students_conditioning(pruned, parts, captioned, tmp_path):
    from diffprune.sources.unet import build_unet
    from diffprune.sources.loader import load_source

    for arch, data in (("tiny-sd", str(captioned)), ("tiny-class", str(captioned / "pairs.jsonl"))):
        student, teacher = load_source(pruned[arch])[0], build_unet(arch)
        s, t = Recorder(student), Recorder(teacher)
        kw = dict(parts) if arch == "tiny-sd" else {}
        finetune(student, tmp_path / arch, data=data, steps=3, teacher=teacher, kd_weight=1.0, caption_dropout=0.5,
                 ema_decay=0, **{**kw, **FAST, "batch_size": 2})
        assert len(s.calls) == len(t.calls) == 3
        for a, b in zip(s.calls, t.calls):
            assert a.keys() == b.keys() and a.keys() == ({"encoder_hidden_states"} if arch == "tiny-sd" else {"class_labels"})
            for key in a:
                assert torch.equal(a[key], b[key]), (arch, key)


def test_resume_of_a_text_conditioned_run_ends_with_the_same_weights(pruned, parts, captioned, tmp_path):
    common = dict(data=str(captioned), steps=3, checkpoint_every=2, ema_decay=0.99, caption_dropout=0.3,
                  **{**parts, **FAST, "batch_size": 2})
    finetune(pruned["tiny-sd"], tmp_path / "straight", **common)

    def crash(step, loss):
        if step == 3:
            raise RuntimeError("simulated kill")  # after the checkpoint of step 2, before the model is saved

    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(pruned["tiny-sd"], tmp_path / "crashed", callback=crash, **common)
    assert not (tmp_path / "crashed").exists()
    assert latest_checkpoint(tmp_path / "crashed.ckpt").name == "step-00000002"
    ckpt = os.listdir(latest_checkpoint(tmp_path / "crashed.ckpt"))
    assert sorted(ckpt) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    report = finetune(pruned["tiny-sd"], tmp_path / "crashed", resume=True, **common)
    assert report.resumed_from == 2
    a, b = diffprune.load(tmp_path / "straight").state_dict(), diffprune.load(tmp_path / "crashed").state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_of_a_class_conditional_run_ends_with_the_same_weights(pruned, tmp_path):
    common = dict(data="builtin:digits", num_images=32, steps=4, checkpoint_every=2, ema_decay=0.99, **FAST)
    finetune(pruned["tiny-class"], tmp_path / "straight", **common)
    with pytest.raises(ZeroDivisionError):
        finetune(pruned["tiny-class"], tmp_path / "crashed", callback=lambda s, _: 1 / 0 if s == 3 else None, **common)
    finetune(pruned["tiny-class"], tmp_path / "crashed", resume=True, **common)
    a, b = diffprune.load(tmp_path / "straight").state_dict(), diffprune.load(tmp_path / "crashed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def few_sampling_steps(monkeypatch):
    """generate:N draws its samples in 2 DDIM steps, not 50: these tests are about what the student is fed."""
    import functools

    import diffprune.data.generate

    monkeypatch.setattr(diffprune.data.generate, "generate", functools.partial(diffprune.data.generate.generate, steps=2))


def test_generated_class_data_cycles_every_class(pruned, tmp_path, few_sampling_steps):
    from diffprune.sources.loader import load_source

    student = load_source(pruned["tiny-class"])[0]
    seen = Recorder(student)
    finetune(student, tmp_path / "ft", data="generate:20", teacher="arch:tiny-class", kd_weight=1.0, steps=6,
             ema_decay=0, **{**FAST, "batch_size": 8})
    labels = torch.cat([c["class_labels"] for c in seen.calls if "class_labels" in c]).tolist()
    assert len(labels) == 48 and set(labels) <= set(range(10)) and len(set(labels)) >= 8  # 20 samples: classes 0..9 twice
    info = json.loads((tmp_path / "ft" / "pruning.json").read_text())["finetune"]
    assert info["data"] == "generate:20" and info["num_images"] == 20


def test_generated_text_data_is_drawn_with_the_prompts_and_trained_on_them(pruned, parts, tmp_path, few_sampling_steps):
    from diffprune.sources.loader import load_source
    from diffprune.pruning.calibration import generate_samples

    prompts = ["a handwritten digit one", "a handwritten digit seven"]
    teacher = load_source("arch:tiny-sd")[0]
    student = load_source(pruned["tiny-sd"])[0]
    seen = Recorder(student)
    noisy = []
    student.register_forward_pre_hook(lambda module, args: noisy.append(args[0].detach().clone()) if args else None)
    finetune(student, tmp_path / "ft", data="generate:4", teacher=teacher, kd_weight=1.0, prompts=prompts, steps=3,
             ema_decay=0, caption_dropout=0.3, **{**parts, **FAST})
    # What the student saw, row by row, is one of the prompts or (dropped) the empty prompt, through the encoder.
    table = parts["text_encoder"](prompts + [""]).encoder_hidden_states  # (3, 77, D)
    rows = torch.cat([c["encoder_hidden_states"] for c in seen.calls])  # (3 steps * 4, 77, D)
    matches = [[torch.allclose(r, t, atol=1e-5) for t in table] for r in rows]
    assert all(any(m) for m in matches) and any(m[0] for m in matches) and any(m[1] for m in matches)
    info = json.loads((tmp_path / "ft" / "pruning.json").read_text())["finetune"]
    assert info["generate"] == {"from": "teacher", "prompts": 2, "guidance_scale": 7.5}
    # The student was trained on pruning's generate path's samples (same function, seed, prompts): rebuild step 1's
    # noisy input from them with the trainer's seeded draws and compare.
    from diffprune.training.finetune import _stream, _targets
    from diffprune.sources.architectures import DEFAULT_SCHEDULER

    samples, _, described = generate_samples(teacher, DEFAULT_SCHEDULER, 4, seed=0, progress=False,
                                             text_encoder=parts["text_encoder"], prompts=prompts, latent=True)
    assert samples.shape == (4, 4, 16, 16) and "2 prompts, images drawn with guidance 7.5" in described
    alphas, _, num_train = _targets(DEFAULT_SCHEDULER)
    g = torch.Generator().manual_seed(_stream(0, 0, 0, 0))
    x0 = samples[torch.randint(0, 4, (4,), generator=g)]
    noise = torch.randn(x0.shape, generator=g)
    a = alphas[torch.randint(0, num_train, (4,), generator=g)].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy[0], a.sqrt() * x0 + (1 - a).sqrt() * noise)


def _bad_inputs(captioned, tmp_path):
    folder = tmp_path / "some-captions"
    shutil.copytree(captioned, folder)
    (folder / "3.txt").unlink()
    (folder / "pairs.jsonl").unlink()
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((4, 16, 16), np.uint8))
    out_of_range = tmp_path / "big.npz"
    np.savez(out_of_range, images=np.zeros((4, 16, 16), np.uint8), labels=np.array([0, 1, 2, 12]))
    return [
        ("tiny-sd", dict(data=str(folder)), r"1 of 8 images have no caption \(.*3\.png\).*same-stem \.txt"),
        ("tiny-sd", dict(data="builtin:digits", num_images=8), r"8 of 8 images have no caption"),
        ("tiny-sd", dict(data=str(captioned), text_encoder=None), "no text encoder was given"),
        ("tiny-sd", dict(data=str(captioned), vae=None), "no VAE was given"),
        ("tiny-sd", dict(data="generate:4"), "would train only the empty prompt.*--prompts"),
        ("tiny-sd", dict(data=str(captioned), prompts=["a cat"]), "prompts .* go with --data generate:N"),
        ("tiny-class", dict(data="generate:4", prompts=["a cat"]), "reads no text"),
        ("tiny-class", dict(data="generate:0"), "write generate:N with N > 0"),
        ("tiny-sd", dict(data=str(captioned), caption_dropout=1.5), "caption_dropout 1.5 is out of range"),
        ("tiny-sd", dict(data=str(captioned), teacher="arch:tiny-class", kd_weight=1.0), "distillation feeds both"),
        ("tiny-class", dict(data=str(unlabelled)), "has no class label for every image"),
        ("tiny-class", dict(data=str(out_of_range)), r"class label \[12\] out of range"),
    ]


def test_bad_inputs_are_clear_errors_with_nothing_written(pruned, parts, captioned, tmp_path):
    for i, (arch, kwargs, message) in enumerate(_bad_inputs(captioned, tmp_path)):
        kw = {**(parts if arch == "tiny-sd" else {}), **kwargs}
        out = tmp_path / f"out{i}"
        with pytest.raises(DiffPruneError, match=message):
            finetune(pruned[arch], out, steps=2, checkpoint_every=1, **{**FAST, **kw})
        assert not out.exists() and not out.with_name(out.name + ".ckpt").exists(), message


def test_cli_finetunes_a_text_model_from_its_pipeline(tmp_path, captioned):
    from diffprune.cli import main

    out = tmp_path / "ft"
    code = main(["finetune", "arch:tiny-sd", str(out), "--data", str(captioned / "pairs.jsonl"), "--steps", "2",
                 "--batch-size", "2", "--warmup-steps", "1", "--caption-dropout", "0.2", "--precompute", "--resize", "pad",
                 "--device", "cpu", "--quiet"])
    assert code == 0
    # A pipeline in, a pipeline out: the tuned UNet in unet/, the frozen parts carried over.
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    info = json.loads((out / "unet" / "pruning.json").read_text())["finetune"]
    assert info["caption_dropout"] == 0.2 and info["precompute"] is True
    assert (out / "unet" / "loss.csv").is_file()


def test_an_sdxl_like_pipeline_fine_tunes_on_both_encoders_and_time_ids(captioned, tmp_path):
    """arch:tiny-sdxl: two text encoders (hidden states concatenated, the second's pooled output) and SDXL's
    text_time added conditioning; pruned, fine-tuned with distillation, saved as a pipeline folder that loads."""
    from diffprune.cli import main
    from diffprune.sources.loader import FromSource, load_source

    pruned = tmp_path / "pruned"
    assert main(["prune", "arch:tiny-sdxl", str(pruned), "--method", "magnitude", "--ratio", "0.5", "--quiet"]) == 0
    student = load_source(str(pruned))[0]
    fed = []
    student.register_forward_pre_hook(lambda m, args, kwargs: fed.append(kwargs) if args else None, with_kwargs=True)
    text = FromSource(str(pruned), "text_encoder")
    report = finetune(student, tmp_path / "ft", data=str(captioned), steps=3, teacher="arch:tiny-sdxl", kd_weight=1.0,
                      text_encoder=text, vae=FromSource(str(pruned), "vae"), caption_dropout=0.0, ema_decay=0,
                      resize="pad", **{**FAST, "batch_size": 2})
    assert len(report.losses) == 3 and all(np.isfinite(r[1]) and r[1] > 0 for r in report.losses)
    first = fed[0]
    assert first["encoder_hidden_states"].shape == (2, 77, 32)  # 16 + 16: both encoders' penultimate states
    assert first["added_cond_kwargs"]["text_embeds"].shape == (2, 32)  # the second encoder's pooled projection
    assert first["added_cond_kwargs"]["time_ids"].shape == (2, 6)
    assert first["added_cond_kwargs"]["text_embeds"].abs().sum() > 0  # real captions, not the zero stand-in

    out = tmp_path / "ft"
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                                       "tokenizer_2", "unet", "vae"]
    tuned = load_source(str(out))[0]
    assert tuned.config.addition_embed_type == "text_time"
    before = load_source(str(pruned))[0].state_dict()
    after = tuned.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert any(not torch.equal(after[k], before[k]) for k in after)
    carried = FromSource(str(out), "text_encoder").load()  # the frozen encoders, carried over unchanged
    torch.testing.assert_close(carried(["a digit"]).text_embeds, text.load()(["a digit"]).text_embeds)
