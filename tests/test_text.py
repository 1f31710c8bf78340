"""Real conditioning for Diff-Pruning: CLIP tokenization (torch-free), a CLIP-style text encoder and a VAE
built from config, captioned calibration data, and gradients that reach cross-attention."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from diffprune.runtime.errors import DiffPruneError
from diffprune.runtime.text import ClipTokenizer

PROMPTS = [
    "a handwritten digit seven",
    "A  Photo\tof a CAT!!",  # case and whitespace runs
    "",  # the empty prompt of classifier-free guidance
    "   leading and trailing   ",
    "don't you're we'll I'm they've it'd 3.14159 x86_64 #hashtag @user e-mail",  # contractions, digits one by one
    "naïve café Ünïcödé Straße 東京 😀 ❤️",  # NFC, non-Latin letters, emoji bytes
    "an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation",
    "word " * 100,  # 100 words: truncated
]


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def test_the_shipped_vocabulary_is_clips(tok):
    assert tok.vocab_size == 49408
    assert (tok.start_id, tok.end_id, tok.pad_id) == (49406, 49407, 49407)
    out = tok(["a photo of a cat"])
    # ids from OpenAI's CLIP README example ("a photo of a cat" -> 320 1125 539 320 2368)
    assert out.ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert out.ids.shape == (1, 77) and out.ids.dtype == np.int64 and (out.ids[0, 7:] == 49407).all()
    assert tok.decode(out.ids[0]) == "a photo of a cat"
    assert Path(__file__).parents[1].joinpath("runtime/assets/clip-bpe.LICENSE").read_text().count("MIT") >= 2


def test_ids_equal_transformers_clip_tokenizer(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tokenizer")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    expected = hf(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert tok(PROMPTS).ids.tolist() == expected


def test_ids_equal_openai_simple_tokenizer(tok):
    # OpenAI's pure-Python tokenizer as open-clip-torch ships it (loaded as a file: open_clip's package
    # imports torchvision). It pads with 0 rather than <|endoftext|>; compare up to the end token.
    pytest.importorskip("ftfy")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open-clip-torch is not installed")
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_openai_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()(PROMPTS).numpy()
    ours = tok(PROMPTS)
    for row, mine, n in zip(reference, ours.ids, ours.lengths):
        assert row[:n].tolist() == mine[:n].tolist() and not row[n:].any()


def test_a_prompt_longer_than_77_tokens_is_truncated_and_reported(tok):
    out = tok(PROMPTS)
    assert out.truncated == [len(PROMPTS) - 1]
    long = out.ids[-1]
    assert long[0] == 49406 and long[-1] == 49407 and out.lengths[-1] == 77
    assert (long[1:76] == tok(["word"]).ids[0, 1]).all()  # the first 75 words kept, the end token last
    assert out.lengths[:3] == [6, 8, 2]


def test_whitespace_and_case_do_not_change_the_ids(tok):
    a, b = tok(["A  Photo\tof a CAT!!", "a photo of a cat !!"]).ids
    assert a.tolist() == b.tolist()
    assert tok(["   leading and trailing   "]).ids.tolist() == tok(["leading and trailing"]).ids.tolist()


def test_a_pipeline_tokenizer_folder_keeps_its_pad_token(tok, tmp_path):
    # SD 2.x's tokenizer pads with "!" (id 0); SD 1.x's with <|endoftext|>.
    folder = tok.save(tmp_path / "tokenizer")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": {"content": "!"}}))
    sd2 = ClipTokenizer.from_folder(folder)
    ids = sd2(["a cat"]).ids[0]
    assert ids[:4].tolist() == [49406, 320, 2368, 49407] and sd2.pad_id == 0 and not ids[4:].any()


def test_a_tokenizer_json_folder_gives_the_same_ids(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "slow")
    transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "slow")).save_pretrained(str(tmp_path / "fast"))
    assert (tmp_path / "fast" / "tokenizer.json").is_file()
    assert ClipTokenizer.from_folder(tmp_path / "fast")(PROMPTS).ids.tolist() == tok(PROMPTS).ids.tolist()


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "merges.txt").unlink(), "neither tokenizer.json nor vocab.json"),
    (lambda f: (f / "vocab.json").write_text("{not json"), "is not valid JSON"),
])
def test_a_broken_tokenizer_folder_is_a_clear_error(tok, tmp_path, damage, message):
    folder = tok.save(tmp_path / "tokenizer")
    damage(folder)
    with pytest.raises(DiffPruneError, match=message):
        ClipTokenizer.from_folder(folder)


def test_prompts_must_be_strings(tok):
    with pytest.raises(DiffPruneError, match="Prompts must be strings; got int 7"):
        tok(["a cat", 7])



def test_tokenization_runs_with_torch_unimportable():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "diffusers", "transformers")):
                    raise ImportError("blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        from diffprune.runtime.text import ClipTokenizer
        ids = ClipTokenizer()(["a handwritten digit seven"]).ids
        assert ids.shape == (1, 77) and ids[0, 0] == 49406, ids
        assert not any(k.split(".")[0] in ("torch", "transformers", "diffusers") for k in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- text encoders and VAEs from config ---------------------------------------------------------

@pytest.mark.parametrize("name, projection, params", [
    ("clip-vit-l-14", False, 123_060_480),  # SD 1.x text_encoder (openai/clip-vit-large-patch14's text tower)
    ("openclip-vit-h-14-penultimate", False, 340_387_840),  # SD 2.x text_encoder (23 of OpenCLIP-H's 24 layers)
    ("openclip-vit-bigg-14", True, 694_659_840),  # SDXL text_encoder_2 (CLIPTextModelWithProjection)
])
def test_real_size_text_encoders_have_the_published_parameter_counts(name, projection, params):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffprune.sources.architectures import TEXT_ENCODERS

    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(
            CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **TEXT_ENCODERS[name]))
    assert sum(p.numel() for p in model.parameters()) == params


def test_real_size_vae_has_sds_parameter_count():
    import torch
    from diffusers import AutoencoderKL

    from diffprune.sources.architectures import VAES

    with torch.device("meta"):
        vae = AutoencoderKL(**VAES["sd"])
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # runwayml/stable-diffusion-v1-5 vae/


def test_built_in_text_encoders_fit_their_unets():
    from diffprune.sources.conditioning import conditioning
    from diffprune.sources.architectures import ARCHITECTURES
    from diffprune.sources.architectures import TEXT_ENCODERS, TEXT_SETUPS

    for arch, (names, layer) in TEXT_SETUPS.items():
        cond = conditioning(ARCHITECTURES[arch])
        assert sum(TEXT_ENCODERS[n]["hidden_size"] for n in names) == cond.text_width, arch
        if cond.pooled_width:
            assert layer == "penultimate" and TEXT_ENCODERS[names[-1]]["projection_dim"] == cond.pooled_width


# --- captioned calibration data -----------------------------------------------------------------



@pytest.fixture(scope="module")
def captioned(captioned_digits):
    """The last caption is long: past CLIP's 77 tokens."""
    return captioned_digits(long_last=True)


@pytest.fixture(scope="module")
def tiny_sd():
    from diffprune.sources.vae import build_vae
    from diffprune.sources.unet import build_unet
    from diffprune.sources.text import build_text_encoder

    return build_unet("tiny-sd"), build_text_encoder("tiny-sd"), build_vae("tiny")


def _calibrate(model, data, **kw):
    from diffprune.sources.architectures import DEFAULT_SCHEDULER
    from diffprune.pruning.calibration import build_calibration

    args = dict(n=64, micro_batch=4, seed=0, progress=False, resize="pad")
    args.update(kw)
    return build_calibration(data, model, dict(DEFAULT_SCHEDULER), args.pop("n"), args.pop("micro_batch"), args.pop("seed"),
                        args.pop("progress"), **args)


def test_images_become_vae_latents_and_captions_text_embeddings(tiny_sd, captioned, capsys):
    import torch

    from diffprune.data.images import load_calibration

    unet, text, vae = tiny_sd
    calib, described = _calibrate(unet, str(captioned), text_encoder=text, vae=vae)
    assert calib.images.shape == (8, 4, 16, 16)  # tiny VAE: 32x32 images (28x28 padded) -> 16x16 latents
    pixels = load_calibration(str(captioned), (32, 32), 3, resize="pad").images
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mean * 0.18215
    torch.testing.assert_close(calib.images, expected)
    captions = [(captioned / f"{i}.txt").read_text().strip() for i in range(8)]
    torch.testing.assert_close(calib.inputs["encoder_hidden_states"], text(captions).encoder_hidden_states)
    assert calib.inputs["encoder_hidden_states"].shape == (8, 77, 24)
    assert described == "captions through arch:tiny-sd (tiny-clip-24, random weights)"
    assert "1 of 8 captions are longer than 77 CLIP tokens and were truncated" in capsys.readouterr().err


def test_a_jsonl_gives_the_same_calibration_as_the_folder(tiny_sd, captioned):
    import torch

    unet, text, vae = tiny_sd
    folder, _ = _calibrate(unet, str(captioned), text_encoder=text, vae=vae, n=5)
    jsonl, _ = _calibrate(unet, str(captioned / "pairs.jsonl"), text_encoder=text, vae=vae, n=5)
    assert torch.equal(folder.images, jsonl.images)  # the same seeded subset of 5, in the same order
    assert torch.equal(folder.inputs["encoder_hidden_states"], jsonl.inputs["encoder_hidden_states"])


def test_images_without_captions_are_refused(tiny_sd, captioned, tmp_path):
    import shutil

    unet, text, vae = tiny_sd
    folder = tmp_path / "some-captions"
    shutil.copytree(captioned, folder)
    (folder / "3.txt").unlink()
    (folder / "pairs.jsonl").unlink()
    with pytest.raises(DiffPruneError, match=r"1 of 8 images have no caption \(.*3\.png\).*same-stem \.txt"):
        _calibrate(unet, str(folder), text_encoder=text, vae=vae)
    with pytest.raises(DiffPruneError, match=r"8 of 8 images have no caption"):
        _calibrate(unet, "builtin:digits", text_encoder=text, vae=vae, n=8)


def test_a_latent_model_without_a_vae_or_text_encoder_is_refused(tiny_sd, captioned):
    unet, text, vae = tiny_sd
    with pytest.raises(DiffPruneError, match="no VAE was given.*generate:N"):
        _calibrate(unet, str(captioned), text_encoder=text)
    with pytest.raises(DiffPruneError, match="no text encoder"):
        _calibrate(unet, str(captioned), vae=vae)


def test_a_text_encoder_of_another_width_is_refused(tiny_sd, captioned):
    from diffprune.sources.text import build_text_encoder

    with pytest.raises(DiffPruneError, match="gives 32-wide hidden states and 32-wide pooled text, but the UNet "
                                             "reads 24-wide encoder_hidden_states"):
        _calibrate(tiny_sd[0], str(captioned), text_encoder=build_text_encoder("tiny-sdxl"), vae=tiny_sd[2])


@pytest.mark.parametrize("lines, message", [
    (['{"text": "a cat"}'], 'has no "image" path'),
    (['{"image": "missing.png", "text": "a cat"}'], "names the image .*missing.png.*does not exist"),
    (["{not json"], "Line 1 .* is not JSON"),
    (['{"image": "0.png", "text": 7}'], '"text" is a int, not a string'),
    ([], "holds no lines"),
])
def test_a_bad_jsonl_is_a_clear_error(captioned, tmp_path, lines, message):
    import shutil

    from diffprune.data.images import load_calibration

    shutil.copy(captioned / "0.png", tmp_path / "0.png")
    (tmp_path / "bad.jsonl").write_text("\n".join(lines))
    with pytest.raises(DiffPruneError, match=message):
        load_calibration(str(tmp_path / "bad.jsonl"), (28, 28), 1)


def test_class_labels_come_from_the_data():
    import torch

    from diffprune.data.images import load_calibration
    from diffprune.sources.unet import build_unet

    model = build_unet("tiny-class")
    calib, _ = _calibrate(model, "builtin:digits", n=12, resize="center-crop")
    labels = load_calibration("builtin:digits", (16, 16), 1, limit=12, resize="center-crop").labels
    assert calib.inputs["class_labels"].tolist() == labels and len(set(labels)) > 3
    given, _ = _calibrate(model, "builtin:digits", n=12, resize="center-crop", class_labels=[4])
    assert given.inputs["class_labels"].tolist() == [4] * 12  # given labels win over the data's
    assert torch.equal(given.images, calib.images)


def test_a_class_label_out_of_range_in_the_data_is_refused(tmp_path):
    from diffprune.sources.unet import build_unet

    np.savez(tmp_path / "d.npz", images=np.zeros((3, 16, 16), np.uint8), labels=np.array([1, 12, 3]))
    with pytest.raises(DiffPruneError, match=r"Data .*d\.npz.* holds class labels the model cannot take.*\[12\] out of "
                                             r"range.*0\.\.9"):
        _calibrate(build_unet("tiny-class"), str(tmp_path / "d.npz"))


# --- Diff-Pruning with real text ----------------------------------------------------------------

def _record_calls(model):
    import torch

    calls = []

    def hook(module, args, kwargs):
        calls.append({**dict(zip(("sample", "timestep"), args)), **kwargs, "grad": torch.is_grad_enabled()})

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_with_captions_cross_attention_gets_gradient(tiny_sd, captioned):
    import copy

    import diffprune

    unet, text, vae = tiny_sd
    model = copy.deepcopy(unet)
    calls = _record_calls(model)
    _, report = diffprune.prune(model, method="diff-pruning", ratio=0.5, data=str(captioned), text_encoder=text, vae=vae,
                                max_timesteps=2, micro_batch=4, resize="pad", progress=False)
    # With zeros for text, every cross-attention (4 groups) got no gradient (tests/test_conditional.py);
    # with captions through the text encoder, all of them do.
    assert report.no_gradient_groups == []
    assert report.conditioning["text_inputs"].startswith("captions through arch:tiny-sd")
    fed = [c for c in calls if c["grad"] and c["timestep"].max() < 2]
    assert len(fed) == 4 and all(c["sample"].shape == (4, 4, 16, 16) for c in fed)
    assert all(c["encoder_hidden_states"].abs().sum() > 0 for c in fed)
    assert "captions through" in report.table()


def test_sdxl_gets_both_encoders_and_the_pooled_text(captioned):
    import copy

    import torch

    import diffprune
    from diffprune.sources.loader import FromSource
    from diffprune.sources.unet import build_unet

    model = build_unet("tiny-sdxl")
    calls = _record_calls(model)
    text = FromSource("arch:tiny-sdxl", "text_encoder").load()
    _, report = diffprune.prune(copy.deepcopy(model), method="diff-pruning", ratio=0.5, data=str(captioned),
                                text_encoder=text, vae=FromSource("arch:tiny-sdxl", "vae"), max_timesteps=1,
                                num_images=4, resize="pad", progress=False)
    assert report.no_gradient_groups == []
    (fed,) = [c for c in calls if c["grad"] and c["timestep"].max() < 1]
    captions = [(captioned / f"{i}.txt").read_text().strip() for i in range(8)]
    from diffprune.data.images import load_calibration

    chosen = [captions[int(Path(f).stem)] for f in load_calibration(str(captioned), (32, 32), 3, limit=4, resize="pad").files]
    expected = text(chosen)
    torch.testing.assert_close(fed["encoder_hidden_states"], expected.encoder_hidden_states)  # (4, 77, 16 + 16)
    torch.testing.assert_close(fed["added_cond_kwargs"]["text_embeds"], expected.text_embeds)  # (4, 32)
    # hidden_states[-2] of each encoder, concatenated: the first 16 columns are the first encoder's
    first = text.parts[0][1](torch.from_numpy(text.parts[0][0](chosen).ids), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(fed["encoder_hidden_states"][..., :16], first)


@pytest.fixture
def few_sampling_steps(monkeypatch):
    import functools

    import diffprune.data.generate

    monkeypatch.setattr(diffprune.data.generate, "generate", functools.partial(diffprune.data.generate.generate, steps=2))


def test_generate_with_prompts_draws_with_guidance_and_prunes_with_those_prompts(tiny_sd, few_sampling_steps):
    import copy

    import torch

    import diffprune

    unet, text, _ = tiny_sd
    model = copy.deepcopy(unet)
    calls = _record_calls(model)
    prompts = ["a handwritten digit seven", "a handwritten digit one"]
    _, report = diffprune.prune(model, method="diff-pruning", ratio=0.5, data="generate:3", prompts=prompts,
                                text_encoder=text, max_timesteps=1, progress=False)
    assert report.no_gradient_groups == []
    assert "2 prompts, images drawn with guidance 7.5" in report.conditioning["text_inputs"]
    want = text([prompts[0], prompts[1], prompts[0]]).encoder_hidden_states
    empty = text([""] * 3).encoder_hidden_states
    sampling = [c for c in calls if not c["grad"] and c["sample"].shape[0] == 6]  # (uncond, cond) stacked
    assert len(sampling) == 2  # 2 DDIM steps
    torch.testing.assert_close(sampling[0]["encoder_hidden_states"], torch.cat([empty, want]))
    (fed,) = [c for c in calls if c["grad"] and c["timestep"].max() < 1]
    torch.testing.assert_close(fed["encoder_hidden_states"], want)
    assert fed["sample"].abs().max() > 0  # latents are not clamped to [-1, 1] (nothing to assert about their range)


# --- pipeline folders and the CLI ---------------------------------------------------------------

def _full_pipeline(tmp_path, unet, text, vae, with_vae=True):
    from diffusers import PNDMScheduler

    folder = tmp_path / "pipe"
    unet.save_pretrained(folder / "unet")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  skip_prk_steps=True).save_config(folder / "scheduler")
    tokenizer, encoder = text.parts[0]
    encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save(folder / "tokenizer")
    if with_vae:
        vae.save_pretrained(folder / "vae")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "PNDMScheduler"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_cli_prunes_a_pipeline_with_captions(tiny_sd, captioned, tmp_path, capsys):
    from diffprune.cli import main

    folder = _full_pipeline(tmp_path, *tiny_sd)
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), str(out), "--method", "diff-pruning", "--data", str(captioned / "pairs.jsonl"), "--ratio", "0.5",
                 "--max-timesteps", "2", "--resize", "pad", "--quiet"]) == 0
    assert f"conditioning: text (captions through {folder}); only the UNet is pruned" in capsys.readouterr().out
    info = json.loads((out / "unet" / "pruning.json").read_text())["pruning"]  # a pipeline in, a pipeline out
    assert info["no_gradient_groups"] == [] and info["timesteps_used"] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("case", ["images without captions", "empty prompts file", "pipeline without vae"])
def test_cli_bad_inputs_are_clear_errors_and_write_nothing(case, tiny_sd, captioned, tmp_path, capsys):
    import shutil

    from diffprune.cli import main

    folder = _full_pipeline(tmp_path, *tiny_sd, with_vae=case != "pipeline without vae")
    data = tmp_path / "data"
    shutil.copytree(captioned, data)
    (data / "pairs.jsonl").unlink()
    args = ["--data", str(data)]
    if case == "images without captions":
        for txt in data.glob("*.txt"):
            txt.unlink()
        expected = "8 of 8 images have no caption"
    elif case == "empty prompts file":
        (tmp_path / "prompts.txt").write_text("\n  \n")
        args = ["--data", "generate:4", "--prompts", str(tmp_path / "prompts.txt")]
        expected = "holds no prompts"
    else:
        expected = "has no vae/ subfolder (model_index.json lists"
    out = tmp_path / "out"
    assert main(["prune", str(folder), str(out), "--method", "diff-pruning", *args, "--ratio", "0.3", "--max-timesteps", "1",
                 "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_generate_without_prompts_uses_the_real_empty_prompt_when_there_is_a_text_encoder(tiny_sd, tmp_path,
                                                                                          few_sampling_steps):
    from diffprune.sources.loader import FromSource

    unet, text, vae = tiny_sd
    folder = _full_pipeline(tmp_path, unet, text, vae)
    calib, described = _calibrate(unet, "generate:2", text_encoder=FromSource(str(folder), "text_encoder"))
    assert described == f"the empty prompt through {folder}"
    assert calib.inputs["encoder_hidden_states"].abs().sum() > 0  # CLIP's "" is not zeros
    import shutil

    shutil.rmtree(folder / "text_encoder")  # no text encoder: generate:N alone falls back to the zero stand-in
    calib, described = _calibrate(unet, "generate:2", text_encoder=FromSource(str(folder), "text_encoder"))
    assert described == "empty-prompt zeros" and not calib.inputs["encoder_hidden_states"].any()
    with pytest.raises(DiffPruneError, match="has no text_encoder/ subfolder"):  # prompts need it
        _calibrate(unet, "generate:2", prompts=["a cat"], text_encoder=FromSource(str(folder), "text_encoder"))


def test_library_progress_bars_follow_the_terminal_rule(monkeypatch):
    """transformers' own bars ("Loading weights") stay out of logs, as ours do, when stderr is not a terminal."""
    import io
    import sys

    from transformers.utils import logging

    from diffprune._io import quiet_library_bars

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, not a terminal
    logging.enable_progress_bar()
    quiet_library_bars()
    assert not logging.is_progress_bar_enabled()
