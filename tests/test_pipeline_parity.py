"""Exported pipelines sampled by the torch-free runtime equal diffusers' own pipelines.

Tiny random-weight Stable Diffusion, SDXL and LDM pipelines are exported (diffprune.export), sampled
in a subprocess where torch and diffusers cannot be imported, and compared with StableDiffusionPipeline,
StableDiffusionXLPipeline and LDMPipeline run on the same torch modules from the same starting latents:
within 1e-3 in [0, 1] (an eighth of one 8-bit level).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOLERANCE = 1e-3

NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "diffusers", "transformers")):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""


def sample_without_torch(folder, tmp_path, noise: np.ndarray, **kwargs) -> np.ndarray:
    """The runtime's images, float (N, C, H, W) in [-1, 1], made in a process where torch cannot import."""
    np.save(tmp_path / "noise.npy", noise)
    code = NO_TORCH + textwrap.dedent(f"""
        import json, warnings
        import numpy as np
        from diffprune.runtime.pipeline import Pipeline
        kwargs = json.loads({json.dumps(json.dumps(kwargs))})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Pipeline({str(folder)!r}, "ort-cpu") as pipe:
                images = pipe.generate(noise=np.load({str(tmp_path / 'noise.npy')!r}), output="float", **kwargs)
        np.save({str(tmp_path / 'images.npy')!r}, images)
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules), "torch was imported"
        print(json.dumps([str(w.message) for w in caught]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sample_without_torch.warnings = json.loads(proc.stdout.strip().splitlines()[-1])
    return np.load(tmp_path / "images.npy")


def to_unit(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) in [0, 1], as diffusers' output_type="np"."""
    return np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``get(src)``: (export folder, the loaded torch parts) for a pipeline source, exported once per module."""
    from diffprune.export import export_pipeline, load_pipeline

    done = {}

    def get(src):
        if src not in done:
            out = tmp_path_factory.mktemp("pipe") / "export"
            export_pipeline(src, out, batch=(1, 1, 2), validate_batches=[1], progress=None)
            done[src] = (out, load_pipeline(src))
        return done[src]

    return get


def _tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def _noise(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-karras", "dpm-solver++-karras"])
def test_stable_diffusion_matches_diffusers(exported, tmp_path, scheduler):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    folder, parts = exported("arch:tiny-sd")
    spec = json.loads((folder / "pipeline.json").read_text())
    (_, text_model), = parts.text.parts
    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler-karras": EulerDiscreteScheduler,
               "dpm-solver++-karras": DPMSolverMultistepScheduler}
    karras = {"use_karras_sigmas": True} if scheduler.endswith("-karras") else {}
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=text_model, tokenizer=_tokenizer(folder / "tokenizer"),
                                   unet=parts.unet, scheduler=classes[scheduler].from_config({**spec["scheduler"], **karras}),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts, negative = ["a photo of a cat", "a red house by the sea at night"], "blurry, low quality"
    noise = _noise((2, 4, 16, 16))
    with torch.no_grad():
        ref = pipe(prompts, negative_prompt=[negative] * 2, guidance_scale=7.5, num_inference_steps=5,
                   latents=torch.from_numpy(noise), output_type="np").images  # (2, 32, 32, 3) in [0, 1]
    ours = to_unit(sample_without_torch(folder, tmp_path, noise, prompt=prompts, negative_prompt=negative,
                                        guidance=7.5, steps=5, scheduler=scheduler))
    assert ours.shape == ref.shape == (2, 32, 32, 3)
    assert np.abs(ours - ref).max() <= TOLERANCE
    assert np.abs(ref[0] - ref[1]).max() > 10 * TOLERANCE  # the prompts change the images: nothing trivial matched


def test_stable_diffusion_long_prompt_is_truncated_as_diffusers_does(exported, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder, parts = exported("arch:tiny-sd")
    spec = json.loads((folder / "pipeline.json").read_text())
    (_, text_model), = parts.text.parts
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=text_model, tokenizer=_tokenizer(folder / "tokenizer"),
                                   unet=parts.unet, scheduler=DDIMScheduler.from_config(spec["scheduler"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    long = "a watercolour of " + ", ".join(f"a small house number {i}" for i in range(40))
    noise = _noise((1, 4, 16, 16), seed=1)
    with torch.no_grad():
        ref = pipe(long, guidance_scale=3.0, num_inference_steps=3, latents=torch.from_numpy(noise),
                   output_type="np").images
    ours = to_unit(sample_without_torch(folder, tmp_path, noise, prompt=long, guidance=3.0, steps=3))
    assert np.abs(ours - ref).max() <= TOLERANCE
    assert any("longer than 77 tokens were truncated" in w for w in sample_without_torch.warnings)


@pytest.mark.parametrize("negative", [None, "ugly"])
def test_sdxl_matches_diffusers(exported, tmp_path, negative):
    # None: diffusers' force_zeros_for_empty_prompt gives zero negative embeddings; a string is encoded.
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    folder, parts = exported("arch:tiny-sdxl")
    spec = json.loads((folder / "pipeline.json").read_text())
    assert spec["scheduler"]["_class_name"] == "EulerDiscreteScheduler"
    (_, te1), (_, te2) = parts.text.parts
    pipe = StableDiffusionXLPipeline(vae=parts.vae, text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=_tokenizer(folder / "tokenizer"),
                                     tokenizer_2=_tokenizer(folder / "tokenizer_2"), unet=parts.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(spec["scheduler"]))
    pipe.set_progress_bar_config(disable=True)
    h, w = spec["image"]["size"]
    noise = _noise((1, 4, 16, 16), seed=2)
    with torch.no_grad():
        ref = pipe("an astronaut riding a horse", negative_prompt=negative, guidance_scale=5.0, num_inference_steps=4,
                   height=h, width=w, latents=torch.from_numpy(noise), output_type="np").images
    ours = to_unit(sample_without_torch(folder, tmp_path, noise, prompt="an astronaut riding a horse",
                                        negative_prompt=negative, guidance=5.0, steps=4))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOLERANCE


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    """A tiny diffusers LDMPipeline folder: unconditional UNet2DModel over a VQModel, DDIM scheduler."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(32, 64),
                 down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                 up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), num_vq_embeddings=32, norm_num_groups=8,
                 sample_size=32)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    folder = tmp_path_factory.mktemp("ldm") / "ldm-pipeline"
    LDMPipeline(vqvae=vq.eval(), unet=unet.eval(), scheduler=scheduler).save_pretrained(str(folder))
    return folder


def test_ldm_matches_diffusers(exported, ldm_folder, tmp_path):
    from diffusers import LDMPipeline

    folder, _ = exported(str(ldm_folder))
    spec = json.loads((folder / "pipeline.json").read_text())
    assert spec["kind"] == "latent" and "vq_decoder" in spec["components"]
    pipe = LDMPipeline.from_pretrained(str(ldm_folder))
    pipe.set_progress_bar_config(disable=True)
    # LDMPipeline takes no latents: it draws them with randn_tensor from the generator; draw the same here.
    noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3)).numpy()
    with torch.no_grad():
        ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5,
                   output_type="np").images
    ours = to_unit(sample_without_torch(folder, tmp_path, noise, n=2, steps=5))
    assert ours.shape == ref.shape == (2, 32, 32, 3)
    assert np.abs(ours - ref).max() <= TOLERANCE
    from diffprune import DiffPruneError
    from diffprune.runtime.pipeline import Pipeline

    with Pipeline(folder, "ort-cpu") as pipe:  # an unconditional pipeline given what only text pipelines take
        for kwargs, message in [(dict(prompt="a face"), "latent pipeline, which takes no prompt"),
                                (dict(guidance=7.5), "needs a text-conditioned pipeline")]:
            with pytest.raises(DiffPruneError, match=message):
                pipe.generate(steps=2, **kwargs)


def test_broken_component_and_wrong_kind_are_clear_errors(exported, tmp_path):
    import shutil

    from diffprune import DiffPruneError
    from diffprune.runtime.pipeline import Pipeline

    folder, _ = exported("arch:tiny-sd")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "vae_decoder" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(DiffPruneError, match="cannot load .*vae_decoder"):
        Pipeline(broken, "ort-cpu").open()
    (broken / "text_encoder" / "model.onnx.data").unlink()
    with pytest.raises(DiffPruneError, match="model.onnx.data' is missing"):
        Pipeline(broken, "ort-cpu").open()
    with pytest.raises(DiffPruneError, match="holds no pipeline.json; it is a single-model export"):
        Pipeline(folder / "unet")
    with Pipeline(folder, "ort-cpu") as pipe:
        with pytest.raises(DiffPruneError, match="give a prompt"):
            pipe.generate(steps=2)


def test_sample_command_on_a_pipeline_export(exported, tmp_path):
    import zlib

    folder, _ = exported("arch:tiny-sd")
    out = tmp_path / "cats.png"
    base = [sys.executable, "-m", "diffprune", "sample", str(folder)]
    proc = subprocess.run(base + ["--prompt", "a photo of a cat", "--negative-prompt", "blurry", "--guidance", "6",
                                  "--steps", "3", "--scheduler", "euler", "--n", "2", "--backend", "ort-cpu",
                                  "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 images, 3 euler steps, guidance 6 on ort-cpu" in proc.stdout and "UNet" in proc.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and zlib.crc32(data) != 0
    for extra, message in [(["--prompt", "a cat", "--guidance", "-1"], "Guidance scale -1.0 is not allowed"),
                           ([], "give a prompt")]:
        proc = subprocess.run(base + ["--out", str(tmp_path / "x.png"), "--steps", "2", *extra], capture_output=True,
                              text=True)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "diffprune", "sample", str(folder / "unet"), "--prompt", "a cat",
                           "--out", str(tmp_path / "y.png")], capture_output=True, text=True)
    assert proc.returncode != 0 and "not a pipeline" in proc.stderr


def test_bench_on_pipeline_exports_times_each_component(exported, tmp_path, tiny_export):
    from diffprune import DiffPruneError
    from diffprune.evaluation.benchmark import markdown, run_bench

    folder, _ = exported("arch:tiny-sd")
    results = run_bench([folder], backend="ort-cpu", steps=2, runs=2, threads=1, scheduler=None, prompt="a cat",
                        progress=False)
    assert results["pipeline"] is True and results["scheduler"] == "ddim" and results["prompt"] == "a cat"
    rows = results["batches"][1]
    assert list(rows) == [folder.name, "dense (diffusers, PyTorch eager)"]  # the baseline: pipeline.json's source
    for name, row in rows.items():
        parts = row["parts_ms"]
        assert set(parts) == {"text_encoder", "unet", "decoder", "sampler"} and row["guidance"] == 7.5
        assert all(parts[k] > 0 for k in ("text_encoder", "unet", "decoder"))
        assert sum(parts.values()) == pytest.approx(row["e2e_ms"]["median"], rel=0.35)  # medians of parts vs of sums
        assert row["unet_ms"]["median"] == pytest.approx(parts["unet"]) and row["peak_rss_mib"] > 0
    assert rows["dense (diffusers, PyTorch eager)"]["backend"] == "torch-eager-cpu"
    assert rows[folder.name]["speedup_vs_eager"] > 0
    text = markdown(results)
    assert "Time per component" in text and f"| 1 | {folder.name} | 7.5 |" in text
    with pytest.raises(DiffPruneError, match="either pipeline exports .* or single-model exports"):
        run_bench([folder, tiny_export], steps=2, runs=1, progress=False)
