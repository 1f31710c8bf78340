"""The shipped text-conditioned digits model (builtin:digits-text): a pipeline source like any other, made of
the architecture it claims (the seeded text encoder of arch:digits-text), and it follows its prompts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import diffprune
from diffprune.sources.loader import FromSource, load_source
from diffprune.sources.text import build_text_encoder

WORDS = "zero one two three four five six seven eight nine".split()
ASSETS = Path(diffprune.__file__).parent / "assets"


@pytest.fixture(scope="module")
def shipped():
    unet, scheduler_config, source = load_source("builtin:digits-text")
    return unet.eval(), scheduler_config, FromSource("builtin:digits-text", "text_encoder").load(), source


def test_it_is_a_pipeline_with_its_card_and_training_record(shipped):
    unet, scheduler_config, _, source = shipped
    assert type(unet).__name__ == "UNet2DConditionModel" and unet.config.cross_attention_dim == 32
    assert source["format"] == "diffprune" and Path(source["source"]) == (ASSETS / "digits-text" / "unet").resolve()
    info = json.loads((ASSETS / "digits-text" / "unet" / "pruning.json").read_text())
    assert info["finetune"]["steps"] >= 1000 and info["finetune"]["caption_dropout"] == 0.1
    card = (ASSETS / "digits-text" / "MODEL_CARD.md").read_text()
    assert "benchmarks/text_digits.py train" in card and f"steps: {info['finetune']['steps']}" in card


def test_its_text_encoder_is_the_seeded_architecture(shipped):
    """The card says the encoder is arch:digits-text's, random and frozen: the shipped weights are exactly those."""
    shipped_encoder = shipped[2]
    built = build_text_encoder("digits-text")
    prompts = ["a handwritten digit seven", ""]
    a, b = shipped_encoder(prompts).encoder_hidden_states, built(prompts).encoder_hidden_states
    assert torch.equal(a, b)


def test_the_right_prompt_predicts_the_noise_better_than_a_wrong_one(shipped):
    """On 128 held-out digits noised to t = 300 and 500, the denoising error under the prompt that names the digit is
    lower than under a prompt naming another digit: the model reads its text."""
    from diffusers import DDPMScheduler

    unet, scheduler_config, encoder, _ = shipped
    with np.load(ASSETS / "digits.npz") as z:  # the last 1,000 were held out of training
        images, labels = z["images"][9000:9128], z["labels"][9000:9128]
    x0 = torch.as_tensor(images, dtype=torch.float32)[:, None] / 127.5 - 1
    scheduler = DDPMScheduler.from_config(scheduler_config)
    g = torch.Generator().manual_seed(0)
    right = encoder([f"a handwritten digit {WORDS[d]}" for d in labels]).encoder_hidden_states
    wrong = encoder([f"a handwritten digit {WORDS[(d + 3) % 10]}" for d in labels]).encoder_hidden_states
    for t in (300, 500):
        noise = torch.randn(x0.shape, generator=g)
        steps = torch.full((len(x0),), t)
        xt = scheduler.add_noise(x0, noise, steps)
        with torch.no_grad():
            err_right = ((unet(xt, steps, encoder_hidden_states=right).sample - noise) ** 2).mean()
            err_wrong = ((unet(xt, steps, encoder_hidden_states=wrong).sample - noise) ** 2).mean()
        assert err_right < 0.97 * err_wrong, (t, err_right.item(), err_wrong.item())


def test_pruning_the_builtin_pipeline_gives_a_pipeline(tmp_path):
    """builtin:digits-text in, a pipeline folder out: the pruned unet/ beside the carried-over text encoder."""
    from diffprune.cli import main

    out = tmp_path / "pruned"
    assert main(["prune", "builtin:digits-text", str(out), "--method", "magnitude", "--ratio", "0.3", "--quiet"]) == 0
    assert (out / "model_index.json").is_file() and (out / "unet" / "pruning.json").is_file()
    assert (out / "text_encoder" / "config.json").is_file() and (out / "tokenizer").is_dir()
    unet, _, _ = load_source(str(out))
    assert unet.config.cross_attention_dim == 32
