"""Text-to-image in pixel space (no VAE; builtin:digits-text) deploys as it is: the pipeline exports
(kind text-to-image-pixel), samples with a prompt without torch, equal to an eager PyTorch reference, and is
benchmarked with and without the eager baseline. The text length is the pipeline tokenizer's: a tokenizer of 32
positions exports a UNet graph reading 32 tokens, and a tokenizer longer than its encoder's positions, or graphs
of different lengths, are refused with a clear error."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import write_pixel_text_pipeline  # noqa: E402 (after importorskip)
from test_pipeline_parity import sample_without_torch  # noqa: E402

TOLERANCE = 1e-3  # in [0, 1]: an eighth of one 8-bit level
def test_the_export_is_a_pixel_text_pipeline_of_the_tokenizers_length(pixel_text):
    folder, out = pixel_text
    spec = json.loads((out / "pipeline.json").read_text())
    assert spec["kind"] == "text-to-image-pixel" and set(spec["components"]) == {"text_encoder", "unet"}
    assert spec["latent"] is None and spec["image"] == {"channels": 1, "size": [8, 8]}
    assert spec["guidance"]["scale"] == 2.0  # model_index.json's _diffprune_guidance_scale
    assert spec["text"]["max_length"] == 32
    unet = json.loads((out / "unet" / "model.json").read_text())
    text = next(i for i in unet["inputs"] if i["name"] == "encoder_hidden_states")
    assert text["shape"][1:] == [32, 16]  # not CLIP's 77: the tokenizer's length
    hidden = json.loads((out / "text_encoder" / "model.json").read_text())["outputs"][0]
    assert hidden["shape"][1:] == [32, 16]
    assert unet["conditioning"]["text_tokens"] == 32


def test_sampled_without_torch_equals_the_eager_reference(pixel_text, tmp_path):
    from diffusers import DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffprune.evaluation.pixel_text import PixelTextPipeline
    from diffprune.sources.loader import load_source

    folder, out = pixel_text
    unet, _, _ = load_source(str(folder))
    ref_pipe = PixelTextPipeline(unet=unet.eval(), text_encoder=CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
                                 tokenizer=CLIPTokenizer.from_pretrained(str(out / "tokenizer")),
                                 scheduler=DDIMScheduler.from_pretrained(str(folder / "scheduler")))
    prompts = ["a handwritten digit seven", "the number 3"]
    noise = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    ref = ref_pipe(prompts, guidance_scale=2.0, num_inference_steps=4, latents=torch.from_numpy(noise)).images
    ours = sample_without_torch(out, tmp_path, noise, prompt=prompts, steps=4, scheduler="ddim")  # guidance: 2.0
    ours = np.clip(ours / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    assert ours.shape == ref.shape == (2, 8, 8, 1)
    assert np.abs(ours - ref).max() <= TOLERANCE
    assert np.abs(ref[0] - ref[1]).max() > 10 * TOLERANCE  # the prompts change the images


def test_sample_command_with_a_prompt(pixel_text, tmp_path):
    _, out = pixel_text
    png = tmp_path / "digits.png"
    proc = subprocess.run([sys.executable, "-m", "diffprune", "sample", str(out), "--prompt", "a handwritten seven",
                           "--n", "2", "--steps", "2", "--backend", "ort-cpu", "--out", str(png)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run([sys.executable, "-m", "diffprune", "sample", str(out), "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "give a prompt" in proc.stderr and "Traceback" not in proc.stderr


def test_a_tokenizer_longer_than_the_encoders_positions_fails_at_export(tmp_path):
    from diffprune import DiffPruneError
    from diffprune.export import export_pipeline

    folder = write_pixel_text_pipeline(tmp_path / "pipe", tokens=32, positions=16)
    with pytest.raises(DiffPruneError, match=r"pads every prompt to 32 tokens .* positions for 16 only"):
        export_pipeline(folder, tmp_path / "out", batch=(1, 1, 2), validate_batches=[1], progress=None)
    assert not (tmp_path / "out").exists()


def test_graphs_of_different_text_lengths_are_refused(pixel_text, tmp_path):
    """A pipeline export whose unet/ was replaced by a UNet-only export (which knows no tokenizer: 77 tokens) while
    its text encoder gives 32: opening it names both shapes, instead of failing at every prompt."""
    from diffprune import DiffPruneError
    from diffprune.export import to_onnx
    from diffprune.runtime.formats import check_text_fits
    from diffprune.runtime.pipeline import Pipeline

    folder, out = pixel_text
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    to_onnx(str(folder / "unet"), broken / "unet", batch=(1, 2, 4), validate_batches=[1], overwrite=True)
    with pytest.raises(DiffPruneError, match=r"text_encoder gives \(batch, 32, 16\), but the unet reads "
                                             r"encoder_hidden_states of \(batch, 77, 16\)"):
        Pipeline(broken, "ort-cpu").open()
    # The lone conditional UNet export: bench points to the pipeline export before starting any process.
    from diffprune.evaluation.benchmark import run_bench

    with pytest.raises(DiffPruneError, match=r"is a UNet export conditioned on text .*Export the whole pipeline"):
        run_bench([broken / "unet"], backend="ort-cpu", steps=1, runs=1, progress=False)
    good = {"text_encoder": {"outputs": [{"name": "hidden_states", "shape": ["batch", 77, 16]}]},
            "text_encoder_2": {"outputs": [{"name": "hidden_states", "shape": ["batch", 77, 16]}]},
            "unet": {"inputs": [{"name": "encoder_hidden_states", "shape": ["batch", 77, 32]}]}}
    check_text_fits(good, "sdxl")  # SDXL: the widths add up
    good["unet"]["inputs"][0]["shape"][2] = 24
    with pytest.raises(DiffPruneError, match="do not fit"):
        check_text_fits(good, "sdxl")


@pytest.mark.parametrize("baseline", ["none", "auto"])
def test_bench_takes_the_conditional_export(pixel_text, baseline):
    from diffprune.evaluation.benchmark import run_bench

    _, out = pixel_text
    results = run_bench([out], backend="ort-cpu", steps=2, runs=1, warmup=0, threads=1, scheduler=None,
                        prompt="a handwritten seven", torch_baseline=baseline, progress=False, memory=False)
    rows = results["batches"][1]
    eager = "dense (diffusers, PyTorch eager)"
    assert list(rows) == ([out.name] + ([eager] if baseline == "auto" else []))
    for row in rows.values():
        assert row["guidance"] == 2.0 and row["parts_ms"]["decoder"] == 0 and row["parts_ms"]["unet"] > 0
    if baseline == "auto":
        assert rows[eager]["backend"] == "torch-eager-cpu" and rows[out.name]["speedup_vs_eager"] > 0


def test_pruning_counts_macs_at_the_tokenizers_length(pixel_text):
    from diffprune.pruning.pruner import prune
    from diffprune.sources.loader import FromSource, load_source
    from diffprune.sources.unet import count_macs_params

    folder, _ = pixel_text
    unet, scheduler, _ = load_source(str(folder))
    at_32, at_77 = count_macs_params(unet, text_tokens=32)[0], count_macs_params(unet)[0]
    assert at_32 < at_77  # cross-attention reads 32 keys, not 77
    _, report = prune(unet, method="magnitude", ratio=0.25, scheduler_config=scheduler,
                      text_encoder=FromSource(str(folder), "text_encoder"), progress=False)
    assert report.macs_before == at_32 and report.conditioning["text_tokens"] == 32


def test_builtin_digits_text_exports_as_a_pipeline():
    """Without exporting (minutes here): the shipped pipeline is classified as one, with its card's guidance."""
    from diffprune.export.pipeline import default_guidance
    from diffprune.sources.resolve import exports_as_pipeline, pipeline_kind, resolve

    assert exports_as_pipeline("builtin:digits-text") and not exports_as_pipeline("builtin:digits-ddpm")
    assert pipeline_kind("builtin:digits-text") == "text-to-image-pixel"
    assert default_guidance(resolve("builtin:digits-text"), "text-to-image-pixel") == 1.5
