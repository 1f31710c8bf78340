"""Pipeline export: tiny SD-, SDXL-like, class-conditional and LDM pipelines (and a pruned one) -> every
component's ONNX checked against torch here, independently of the export's own validation; broken inputs."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.export import export_pipeline
from diffprune.export.pipeline import save_pipeline_folder

SMALL = dict(batch=(1, 1, 2), validate_batches=[1, 2], progress=None)


def _run(folder, name, feeds):
    session = ort.InferenceSession(str(folder / name / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _sd_folder(root, arch="tiny-sd", vae=None):
    return save_pipeline_folder(arch, root / "pipe", vae=vae)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd") / "onnx"
    return export_pipeline("arch:tiny-sd", out, batch=(1, 2, 4), progress=None), out


def test_sd_pipeline_json_describes_every_component(sd):
    record, out = sd
    assert json.loads((out / "pipeline.json").read_text()) == json.loads(json.dumps(record))
    assert record["format"] == "diffprune.pipeline/1" and record["kind"] == "text-to-image"
    assert record["components"] == {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae_decoder"}
    assert record["tokenizers"] == {"text_encoder": "tokenizer"}
    assert record["guidance"] == {"scale": 7.5, "negative_prompt": ""}
    assert record["latent"] == {"channels": 4, "sample_size": [16, 16], "scaling_factor": 0.18215,
                                "shift_factor": None, "vae_factor": 2}
    assert record["image"] == {"channels": 3, "size": [32, 32]}
    assert record["text"]["max_length"] == 77 and record["text"]["layer"] == "last" and record["text"]["widths"] == [24]
    assert record["scheduler"]["_class_name"] == "DDIMScheduler" and record["scheduler"]["beta_schedule"] == "scaled_linear"
    # classifier-free guidance runs [uncond; cond] as one batch: UNet and text encoder take twice the images
    assert record["batch"]["unet"] == {"min": 1, "opt": 4, "max": 8} == record["batch"]["text_encoder"]
    assert record["batch"]["vae_decoder"] == {"min": 1, "opt": 2, "max": 4}
    assert all(v["passed"] for v in record["validation"].values())
    for name, sub in record["components"].items():
        meta = json.loads((out / sub / "model.json").read_text())
        assert meta["component"] == name and meta["validation"]["passed"] and meta["dtype"] == "fp32"
    unet = json.loads((out / "unet" / "model.json").read_text())
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][2]["shape"] == ["batch", 77, 24] and unet["conditioning"]["kind"] == "text"
    assert (out / "unet" / "model.onnx.data").is_file()  # weights external, as for the pixel UNet


def test_sd_components_run_like_torch(sd):
    """tokenizer -> text encoder -> UNet (doubled batch) -> VAE decoder on ONNX Runtime = the torch parts."""
    from diffprune.sources.vae import build_vae
    from diffprune.sources.unet import build_unet
    from diffprune.runtime.text import ClipTokenizer
    from diffprune.sources.text import build_text_encoder

    _, out = sd
    text = build_text_encoder("tiny-sd")
    tokenizer = ClipTokenizer.from_folder(out / "tokenizer")
    prompts = ["", "a photo of a cat", "an astronaut riding a horse", "digits"]
    ids = tokenizer(prompts).ids
    assert (ids == text.parts[0][0](prompts).ids).all()  # the written tokenizer is the one the encoder was used with
    (hidden,) = _run(out, "text_encoder", {"input_ids": ids})
    ref = text(prompts).encoder_hidden_states.numpy()
    assert np.abs(hidden - ref).max() < 1e-4
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((8, 4, 16, 16)).astype(np.float32)  # 2B = 8 at the export's max of 4 images
    t = np.array([999, 999, 999, 999, 500, 500, 0, 0], dtype=np.float32)
    ehs = np.concatenate([hidden, hidden[::-1]])
    (eps,) = _run(out, "unet", {"sample": sample, "timestep": t, "encoder_hidden_states": ehs})
    with torch.no_grad():
        ref = build_unet("tiny-sd")(torch.from_numpy(sample), torch.from_numpy(t),
                                    encoder_hidden_states=torch.from_numpy(ehs)).sample.numpy()
    assert np.abs(eps - ref).max() < 1e-4
    latents = (rng.standard_normal((3, 4, 16, 16)) / 0.18215).astype(np.float32)
    (image,) = _run(out, "vae_decoder", {"latent_sample": latents})
    with torch.no_grad():
        ref = build_vae("tiny").decode(torch.from_numpy(latents)).sample.numpy()
    assert image.shape == (3, 3, 32, 32) and np.abs(image - ref).max() < 1e-3


def test_tensorrt_profiles_cover_the_guidance_batch_and_the_text_length(sd, tmp_path):
    from diffprune.export import build_pipeline, pipeline_profiles

    _, out = sd
    profiles = pipeline_profiles(out)  # the exported ranges: UNet and text encoder already doubled
    assert profiles["unet"] == {
        "sample": ((1, 4, 16, 16), (4, 4, 16, 16), (8, 4, 16, 16)),
        "timestep": ((1,), (4,), (8,)),
        "encoder_hidden_states": ((1, 77, 24), (4, 77, 24), (8, 77, 24)),
    }
    assert profiles["text_encoder"] == {"input_ids": ((1, 77), (4, 77), (8, 77))}
    assert profiles["vae_decoder"] == {"latent_sample": ((1, 4, 16, 16), (2, 4, 16, 16), (4, 4, 16, 16))}
    images = pipeline_profiles(out, batch=(1, 1, 3))  # 3 images: 6 rows through the UNet
    assert images["unet"]["sample"] == ((1, 4, 16, 16), (2, 4, 16, 16), (6, 4, 16, 16))
    assert images["vae_decoder"]["latent_sample"][2] == (3, 4, 16, 16)
    with pytest.raises(DiffPruneError, match="outside the exported range 1..8"):
        pipeline_profiles(out, batch=(1, 2, 5))  # 10 UNet rows: more than exported
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(DiffPruneError, match="tensorrt is not installed"):
            build_pipeline(out, tmp_path / "engines")
        assert not (tmp_path / "engines").exists()


def test_cli_prints_the_profiles_without_tensorrt(sd, capsys):
    from diffprune.cli import main

    _, out = sd
    assert main(["build", str(out), "--print-profiles", "--batch", "1", "2", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "unet.encoder_hidden_states: min [1, 77, 24] opt [4, 77, 24] max [8, 77, 24]" in printed
    assert "vae_decoder.latent_sample: min [1, 4, 16, 16] opt [2, 4, 16, 16] max [4, 4, 16, 16]" in printed


def test_triton_repository_of_a_pipeline(sd, tmp_path):
    from test_export import _parse_pbtxt

    from diffprune.export import write_pipeline_repository

    _, out = sd
    models = write_pipeline_repository(tmp_path / "repo", out, prefix="sd_")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["sd_pipeline", "sd_text_encoder", "sd_unet",
                                                                     "sd_vae_decoder"]
    assert set(models) == {"text_encoder", "unet", "vae_decoder", "pipeline"}  # + the loop (test_triton_pipeline.py)
    loop = _parse_pbtxt((tmp_path / "repo" / "sd_pipeline" / "config.pbtxt").read_text())
    assert loop["backend"] == "python" and loop["output"][0]["dims"] == [-1, 32, 32, 3]
    unet = _parse_pbtxt((tmp_path / "repo" / "sd_unet" / "config.pbtxt").read_text())
    assert unet["name"] == "sd_unet" and unet["max_batch_size"] == 8  # the doubled guidance batch
    assert [i["name"] for i in unet["input"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["input"][2] == {"name": "encoder_hidden_states", "data_type": "TYPE_FP32", "dims": [77, 24]}
    assert unet["input"][1]["reshape"] == {"shape": []}
    text = _parse_pbtxt((tmp_path / "repo" / "sd_text_encoder" / "config.pbtxt").read_text())
    assert text["input"] == [{"name": "input_ids", "data_type": "TYPE_INT64", "dims": [77]}]
    assert text["output"][0]["dims"] == [77, 24]
    vae = _parse_pbtxt((tmp_path / "repo" / "sd_vae_decoder" / "config.pbtxt").read_text())
    assert vae["input"][0]["dims"] == [4, 16, 16] and vae["output"][0]["dims"] == [3, 32, 32]
    assert (tmp_path / "repo" / "sd_unet" / "1" / "model.onnx.data").is_file()
    with pytest.raises(DiffPruneError, match="holds no pipeline.json"):
        write_pipeline_repository(tmp_path / "repo2", out / "unet")


def test_sdxl_pipeline(tmp_path):
    from diffprune.sources.unet import build_unet
    from diffprune.sources.text import build_text_encoder

    out = tmp_path / "xl"
    record = export_pipeline("arch:tiny-sdxl", out, **SMALL)
    assert record["kind"] == "text-to-image-xl" and record["guidance"]["scale"] == 5.0
    assert set(record["components"]) == {"text_encoder", "text_encoder_2", "unet", "vae_decoder"}
    assert record["tokenizers"] == {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    assert record["text"]["layer"] == "penultimate" and record["text"]["pooled_width"] == 32
    assert record["xl"] == {"add_time_ids": [32, 32, 0, 0, 32, 32]}
    assert record["scheduler"]["_class_name"] == "EulerDiscreteScheduler"
    text = build_text_encoder("tiny-sdxl")
    prompts = ["", "a red cube on a table"]
    ids = [tok(prompts).ids for tok, _ in text.parts]
    (h1,) = _run(out, "text_encoder", {"input_ids": ids[0]})
    h2, pooled = _run(out, "text_encoder_2", {"input_ids": ids[1]})
    ref = text(prompts)
    assert np.abs(np.concatenate([h1, h2], -1) - ref.encoder_hidden_states.numpy()).max() < 1e-4
    assert np.abs(pooled - ref.text_embeds.numpy()).max() < 1e-4
    unet = json.loads((out / "unet" / "model.json").read_text())
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    sample = np.random.default_rng(0).standard_normal((2, 4, 16, 16)).astype(np.float32)
    t = np.array([10.0, 900.0], dtype=np.float32)
    time_ids = np.tile(np.array(record["xl"]["add_time_ids"], dtype=np.float32), (2, 1))
    feeds = {"sample": sample, "timestep": t, "encoder_hidden_states": ref.encoder_hidden_states.numpy(),
             "text_embeds": ref.text_embeds.numpy(), "time_ids": time_ids}
    (eps,) = _run(out, "unet", feeds)
    with torch.no_grad():
        want = build_unet("tiny-sdxl")(torch.from_numpy(sample), torch.from_numpy(t),
                                       encoder_hidden_states=ref.encoder_hidden_states,
                                       added_cond_kwargs={"text_embeds": ref.text_embeds,
                                                          "time_ids": torch.from_numpy(time_ids)}).sample.numpy()
    assert np.abs(eps - want).max() < 1e-4
    from diffprune.export import pipeline_profiles

    profiles = pipeline_profiles(out)
    assert profiles["unet"]["text_embeds"] == ((1, 32), (2, 32), (4, 32))
    assert profiles["unet"]["time_ids"] == ((1, 6), (2, 6), (4, 6))
    assert profiles["text_encoder_2"] == {"input_ids": ((1, 77), (2, 77), (4, 77))}


def test_class_conditional_pipeline(tmp_path):
    from diffprune.sources.unet import build_unet

    out = tmp_path / "cls"
    record = export_pipeline("arch:tiny-class", out, **SMALL)
    assert record["kind"] == "class-conditional" and record["num_classes"] == 10
    assert record["components"] == {"unet": "unet"} and record["latent"] is None and record["text"] is None
    assert record["guidance"] == {"scale": 1.0, "negative_prompt": None}
    assert record["batch"]["unet"] == {"min": 1, "opt": 1, "max": 2}  # no guidance, no doubled batch
    unet = json.loads((out / "unet" / "model.json").read_text())
    assert unet["inputs"][2] == {"name": "class_labels", "dtype": "int64", "shape": ["batch"]}
    x = np.random.default_rng(1).standard_normal((2, 1, 16, 16)).astype(np.float32)
    t, labels = np.array([5.0, 700.0], dtype=np.float32), np.array([3, 9])
    (eps,) = _run(out, "unet", {"sample": x, "timestep": t, "class_labels": labels})
    with torch.no_grad():
        ref = build_unet("tiny-class")(torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(labels))
    assert np.abs(eps - ref.sample.numpy()).max() < 1e-4
    with pytest.raises(DiffPruneError, match="needs a text-conditioned pipeline"):
        export_pipeline("arch:tiny-class", tmp_path / "g", guidance_scale=3.0, **SMALL)
    assert not (tmp_path / "g").exists()


@pytest.fixture
def ldm_folder(tmp_path):
    """A diffusers LDMPipeline folder: UNet2DModel over a VQModel's 3-channel latents, DDIM."""
    from diffusers import DDIMScheduler, LDMPipeline

    from diffprune.sources.vae import build_vq
    from diffprune.sources.unet import build_unet

    folder = tmp_path / "ldm"
    LDMPipeline(vqvae=build_vq("tiny"), unet=build_unet("tiny-attn"), scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


def test_ldm_pipeline(ldm_folder, tmp_path):
    from diffprune.sources.vae import load_vq

    out = tmp_path / "ldm-onnx"
    record = export_pipeline(ldm_folder, out, **SMALL)
    assert record["kind"] == "latent" and record["components"] == {"unet": "unet", "vq_decoder": "vq_decoder"}
    assert record["scheduler"]["_class_name"] == "DDIMScheduler"
    assert record["latent"]["channels"] == 3 and record["latent"]["scaling_factor"] == pytest.approx(0.18215)
    assert record["image"] == {"channels": 3, "size": [32, 32]} and record["guidance"]["scale"] == 1.0
    vq = load_vq(ldm_folder)
    z = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (image,) = _run(out, "vq_decoder", {"latent_sample": z})
    with torch.no_grad():
        ref = vq.decode(torch.from_numpy(z)).sample.numpy()  # quantises to the codebook inside, as the graph does
        unquantised = vq.decode(torch.from_numpy(z), force_not_quantize=True).sample.numpy()
    assert np.abs(image - ref).max() < 1e-3
    assert np.abs(image - unquantised).max() > 1e-2  # the quantisation is really in the graph


def test_pruned_unet_in_a_pipeline_folder(tmp_path):
    folder = _sd_folder(tmp_path)
    from diffprune.sources.unet import build_unet

    pruned, report = diffprune.prune(build_unet("tiny-sd"), method="magnitude", ratio=0.4, progress=False)
    shutil.rmtree(folder / "unet")
    diffprune.save(pruned, folder / "unet", info={"pruning": report.to_dict()})
    out = tmp_path / "onnx"
    record = export_pipeline(folder, out, exporter="torchscript", **SMALL)
    assert record["kind"] == "text-to-image" and record["pruning"]["pruning"]["ratio"] == 0.4
    assert record["scheduler"]["_class_name"] == "DDIMScheduler"  # the pipeline's scheduler/, not unet/'s own
    assert record["source"]["pipeline_class"] == "StableDiffusionPipeline"
    unet = json.loads((out / "unet" / "model.json").read_text())
    assert unet["params"] < sum(p.numel() for p in build_unet("tiny-sd").parameters())
    sample = np.random.default_rng(4).standard_normal((2, 4, 16, 16)).astype(np.float32)
    t = np.array([1.0, 600.0], dtype=np.float32)
    ehs = np.random.default_rng(5).standard_normal((2, 77, 24)).astype(np.float32)
    (eps,) = _run(out, "unet", {"sample": sample, "timestep": t, "encoder_hidden_states": ehs})
    with torch.no_grad():
        ref = diffprune.load(folder / "unet")(torch.from_numpy(sample), torch.from_numpy(t),
                                              encoder_hidden_states=torch.from_numpy(ehs)).sample.numpy()
    assert np.abs(eps - ref).max() < 1e-4
    assert (out / "tokenizer" / "vocab.json").read_bytes() == (folder / "tokenizer" / "vocab.json").read_bytes()


def _overflowing_vae():
    """The tiny VAE with its decoder's first conv scaled up: fine in float32, past fp16's 65504 at once."""
    from diffprune.sources.vae import build_vae

    vae = build_vae("tiny")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e4)
    return vae


def test_fp16_keeps_the_vae_decoder_in_fp32_and_refuses_an_fp16_one_that_overflows(tmp_path):
    folder = _sd_folder(tmp_path, vae=_overflowing_vae())
    bad = tmp_path / "fp16-vae"
    with pytest.raises(DiffPruneError, match=r"vae decoder does not hold in float16.*Export it in fp32"):
        export_pipeline(folder, bad, dtype="fp16", vae_dtype="fp16", exporter="torchscript", **SMALL)
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".fp16-vae")]
    out = tmp_path / "fp16"
    record = export_pipeline(folder, out, dtype="fp16", exporter="torchscript", **SMALL)
    assert record["precision"] == {"vae_decoder": "fp32", "text_encoder": "fp16", "unet": "fp16"}
    import onnx

    graph = onnx.load(str(out / "vae_decoder" / "model.onnx"))
    assert {i.data_type for i in graph.graph.initializer} == {onnx.TensorProto.FLOAT}
    unet = onnx.load(str(out / "unet" / "model.onnx"))
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in unet.graph.initializer}
    assert all(v["passed"] and all(c["finite"] for c in v["cases"]) for v in record["validation"].values())


@pytest.mark.parametrize("case, fragment", [
    ("missing vae", r"has no vae/ subfolder"),
    ("missing tokenizer", r"has no tokenizer/ subfolder"),
    ("unknown pipeline", r"is a 'KandinskyPipeline' .*diffprune exports StableDiffusionPipeline"),
    ("text unet alone", r"text-conditioned UNet on its own.*--unet-only"),
    ("foreign unet", r"takes no text; its unet/ does not belong to it"),
])
def test_broken_pipelines_are_clear_errors_and_write_nothing(case, fragment, tmp_path):
    from diffprune.sources.unet import build_unet

    folder = _sd_folder(tmp_path)
    src = folder
    if case == "missing vae":
        shutil.rmtree(folder / "vae")
    elif case == "missing tokenizer":
        shutil.rmtree(folder / "tokenizer")
    elif case == "unknown pipeline":
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    elif case == "text unet alone":
        src = folder / "unet"
    else:
        shutil.rmtree(folder / "unet")
        build_unet("tiny").save_pretrained(folder / "unet")
    out = tmp_path / "out"
    with pytest.raises(DiffPruneError, match=fragment):
        export_pipeline(src, out, **SMALL)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_bad_pipeline_options(tmp_path):
    with pytest.raises(DiffPruneError, match="vae_dtype 'int8' is not supported"):
        export_pipeline("arch:tiny-sd", tmp_path / "x", vae_dtype="int8")
    with pytest.raises(DiffPruneError, match="batch range"):
        export_pipeline("arch:tiny-sd", tmp_path / "x", batch=(4, 2, 8))
    with pytest.raises(DiffPruneError, match="Unknown built-in architecture 'nope'"):
        export_pipeline("arch:nope", tmp_path / "x")
    with pytest.raises(DiffPruneError, match="VQ-f4 autoencoder is not built in"):
        export_pipeline("arch:ldm-celebahq-256", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_pipeline_and_a_pixel_unet_as_before(tmp_path, capsys):
    from diffprune.cli import main

    assert main(["export", "arch:tiny-class", str(tmp_path / "cls"), "--max-batch", "2", "--exporter", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert "pipeline (class-conditional)" in printed and "unet: " in printed
    assert (tmp_path / "cls" / "pipeline.json").is_file()
    assert main(["export", "arch:tiny-class", str(tmp_path / "u"), "--unet-only", "--max-batch", "2",
                 "--exporter", "torchscript"]) == 0
    assert (tmp_path / "u" / "model.onnx").is_file() and not (tmp_path / "u" / "pipeline.json").exists()
    assert main(["export", "arch:tiny-sd", str(tmp_path / "v"), "--vae-fp16"]) == 2
    assert "--vae-fp16 needs --fp16" in capsys.readouterr().err
    assert main(["export", "arch:tiny-sd", str(tmp_path / "v"), "--dynamic-hw"]) == 2
    assert "--dynamic-hw apply to a single UNet export" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def _optimum_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_optimum.py"
    spec = importlib.util.spec_from_file_location("compare_optimum", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_optimum_comparison_where_optimum_is_installed(tmp_path, capsys):
    script = _optimum_script()
    if script.optimum_exporter()[0] is None:
        assert script.main([]) == 0  # says why and leaves, instead of failing where optimum cannot be installed
        assert "skipped: optimum's ONNX exporter is not importable" in capsys.readouterr().out
        pytest.skip("optimum's ONNX exporter is not installed (optimum-onnx needs transformers < 4.58)")
    result = script.compare("arch:tiny-sd", tmp_path)
    assert result["components"]["text_encoder"]["max_abs"]["hidden_states"] < 1e-4
    assert result["components"]["vae_decoder"]["max_abs"]["sample"] < 1e-3
