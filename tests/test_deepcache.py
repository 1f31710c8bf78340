"""Step caching (DeepCache): the torch split, the export's full + shallow graphs, and the runtime's cached
sampling against a torch reference of the same caching (diffprune.sources.deepcache.deepcache)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffprune import DiffPruneError  # noqa: E402
from diffprune.sources.deepcache import DeepCache, deepcache  # noqa: E402

TOLERANCE = 1e-3
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "clip_sample": False}


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def tiny_cond_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


@pytest.mark.parametrize("make, cond", [(tiny_unet, {}), (tiny_cond_unet, {"encoder_hidden_states": (2, 5, 16)})])
def test_shallow_path_on_the_full_steps_input_is_the_full_unet(make, cond):
    # Fed the feature of a full pass on the same input, the shallow path recomputes exactly the UNet's output:
    # what it runs (conv_in, first down block, last up block, conv_out) is the UNet's own code.
    unet = make()
    c = unet.config
    x, t = torch.randn(2, c.in_channels, c.sample_size, c.sample_size), torch.tensor([3.0, 700.0])
    kwargs = {k: torch.randn(*shape) for k, shape in cond.items()}
    cache = DeepCache(unet)
    with torch.no_grad():
        ref = unet(x, t, **kwargs).sample
        full, feature = cache.full(x, t, **kwargs)
        shallow = cache.shallow(feature, x, t, **kwargs).sample
        moved = cache.shallow(feature, x * 0.9, t - 2, **kwargs).sample
    assert torch.equal(full.sample, ref) and torch.equal(shallow, ref)
    assert feature.shape[1] == unet.up_blocks[-1].resnets[0].in_channels - c.block_out_channels[0]  # F + skip
    assert (moved - ref).abs().max() > 1e-3  # a different input does change the shallow output
    with pytest.raises(DiffPruneError, match="Cache branch 5"):
        DeepCache(unet, 5)


def test_deepcache_context_runs_full_then_shallow_calls():
    unet = tiny_unet()
    seen = []
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10.0])
    with torch.no_grad(), deepcache(unet, 3) as cache:
        original = cache.shallow
        cache.shallow = lambda *a, **k: (seen.append("shallow"), original(*a, **k))[1]
        for _ in range(5):
            unet(x, t)
    assert seen == ["shallow"] * 3  # calls 1, 2 and 4 of 0..4
    assert "forward" not in unet.__dict__  # the UNet is itself again
    with pytest.raises(DiffPruneError, match="cache interval 0"):
        with deepcache(unet, 0):
            pass


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(plain export, export with step caching) of the tiny pixel UNet; both with attention fused for ort-cpu."""
    from diffprune.export import export_unet

    unet, root = tiny_unet(), tmp_path_factory.mktemp("deepcache")
    common = dict(batch=(1, 2, 4), validate_batches=[1, 2])
    export_unet(unet, root / "plain", SCHEDULER, {"source": "test"}, **common)
    export_unet(unet, root / "cached", SCHEDULER, {"source": "test"}, step_cache=1, **common)
    return root / "plain", root / "cached", unet


@pytest.fixture(scope="module")
def unfused_cached(exports, tmp_path_factory):
    """The same step-cache export with --no-fuse-attention: model.onnx alone in both folders."""
    from diffprune.export import export_unet

    out = tmp_path_factory.mktemp("deepcache-unfused") / "cached"
    export_unet(exports[2], out, SCHEDULER, {"source": "test"}, step_cache=1, fuse_attention=False, batch=(1, 2, 4),
                validate_batches=[1, 2])
    return out


def test_export_writes_the_full_graph_with_the_feature_and_the_shallow_graph(exports):
    _, cached, _ = exports
    full = json.loads((cached / "model.json").read_text())
    shallow = json.loads((cached / "shallow" / "model.json").read_text())
    assert [o["name"] for o in full["outputs"]] == ["out_sample", "deep_feature"]
    assert [i["name"] for i in shallow["inputs"]] == ["sample", "timestep", "deep_feature"]
    assert full["step_cache"]["blocks"] == 1 and full["step_cache"]["feature_shape"] == ["batch", 32, 16, 16]
    assert shallow["step_cache"]["role"] == "shallow" and shallow["validation"]["passed"]
    assert shallow["macs"] < 0.6 * full["macs"]  # the deep blocks are gone from the shallow graph


def test_step_cache_export_fuses_attention_in_both_graphs(exports):
    # The full graph keeps its two outputs in model.ort.onnx. This UNet's shallow graph (its outer blocks) has no
    # attention, and still gets a model.ort.onnx for its group norms (export/attention.py's ort_cpu_graph).
    import onnx

    from diffprune.runtime import open_runner
    from diffprune.runtime.runners import open_shallow

    _, cached, unet = exports
    full = json.loads((cached / "model.json").read_text())
    shallow = json.loads((cached / "shallow" / "model.json").read_text())
    attentions = sum(type(m).__name__ == "Attention" for m in unet.modules())
    for folder, meta in ((cached, full), (cached / "shallow", shallow)):
        record = meta["ort_cpu"]
        assert meta["opset"] == 23 and record["file"] == "model.ort.onnx" and (folder / "model.ort.onnx").is_file()
        assert record["validation"]["passed"] and record["validation"]["max_abs_error"] <= 1e-4
        graph = onnx.load(str(folder / "model.ort.onnx"), load_external_data=False)
        assert [o.name for o in graph.graph.output] == [o["name"] for o in meta["outputs"]]
        ops = [n.op_type for n in graph.graph.node]
        assert "Attention" not in ops and ops.count("MultiHeadAttention") == record["fused"]
    assert full["ort_cpu"]["fused"] == attentions and full["ort_cpu"]["left"] == 0
    # every validation case compared both outputs of the full graph: the feature is as exact as the sample
    assert len(full["ort_cpu"]["validation"]["cases"]) == 2
    with open_runner(cached, "ort-cpu") as runner:
        assert runner.graph_path.name == "model.ort.onnx"
        assert runner.spinning  # alone, ONNX Runtime's idle threads may spin
        session = runner.session
        shallow_runner = open_shallow(runner, 2)
        try:
            assert shallow_runner.graph_path == cached / "shallow" / "model.ort.onnx"
            # two sessions called in alternation: neither spins, the full one reopened without it
            assert not runner.spinning and not shallow_runner.spinning and runner.session is not session
        finally:
            shallow_runner.close()


@pytest.mark.parametrize("interval", [2, 3])
def test_cached_sampling_on_fused_graphs_equals_the_unfused_graphs(exports, unfused_cached, interval):
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    _, cached, _ = exports
    noise = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out, graphs = [], []
    for folder in (cached, unfused_cached):
        with open_runner(folder, "ort-cpu") as runner, \
                Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=interval) as sampler:
            out.append(sampler.generate(2, steps=7, noise=noise, output="float"))
            graphs.append((runner.graph_path.name, sampler.shallow.graph_path.name))
    assert graphs == [("model.ort.onnx", "model.ort.onnx"), ("model.onnx", "model.onnx")]
    fused, unfused = out
    # float32 rounding only (the random UNet's samples reach ~50): 1e-4 of the scale
    assert np.abs(fused - unfused).max() <= 1e-4 * max(1.0, float(np.abs(unfused).max()))


def _reference(unet, scheduler_name, noise, steps, interval):
    """Torch + diffusers: the same loop as the runtime's pixel sampler, the UNet cached by deepcache()."""
    import diffusers

    from diffprune.runtime.formats import DIFFUSERS_SCHEDULERS, scheduler_variant

    base, config = scheduler_variant(scheduler_name, {**SCHEDULER, "_class_name": DIFFUSERS_SCHEDULERS["ddim"]})
    sched = getattr(diffusers, DIFFUSERS_SCHEDULERS[base]).from_config(config)
    sched.set_timesteps(steps)
    x = torch.from_numpy(noise)
    with torch.no_grad(), deepcache(unet, interval):
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), torch.full((len(x),), float(t))).sample
            x = sched.step(out, t, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver++-karras", "euler"])
@pytest.mark.parametrize("interval", [2, 3])
def test_cached_sampling_equals_the_torch_reference(exports, scheduler, interval):
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    plain, cached, unet = exports
    noise = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with open_runner(cached, "ort-cpu") as runner, \
            Sampler(runner, make_scheduler(scheduler, runner.scheduler_config), cache_interval=interval) as sampler:
        ours = sampler.generate(2, steps=7, noise=noise, output="float")
        timing = sampler.last_timing
        calls = runner.calls, sampler.shallow.calls
    ref = _reference(unet, scheduler, noise, 7, interval)
    # The random-weight UNet leaves [-1, 1] (values ~50): compare the images, and the samples before clipping
    # relative to their scale, so saturated pixels hide nothing.
    assert np.abs(np.clip(ours, -1, 1) - np.clip(ref, -1, 1)).max() <= TOLERANCE
    assert np.abs(ours - ref).max() <= TOLERANCE * max(1.0, float(np.abs(ref).max()))
    full_steps = len(range(0, 7, interval))
    assert calls == (full_steps, 7 - full_steps) and timing["unet_shallow_s"] > 0
    plain_ref = _reference(unet, scheduler, noise, 7, 1)
    assert np.abs(ref - plain_ref).max() > 10 * TOLERANCE * max(1.0, float(np.abs(ref).max()))  # caching changed them


def test_cached_sampling_on_openvino_equals_onnx_runtime(exports):
    """OpenVINO alternates the full and the shallow graph (two compiled models, one runner each) as ONNX Runtime
    does: the same images, and the same split of calls."""
    pytest.importorskip("openvino")
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    _, cached, _ = exports
    noise = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out, calls = [], []
    for backend in ("ort-cpu", "openvino@f32"):
        with open_runner(cached, backend) as runner, \
                Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=3) as sampler:
            out.append(sampler.generate(2, steps=7, noise=noise, output="float"))
            calls.append((runner.calls, sampler.shallow.calls, type(sampler.shallow).__name__))
    assert calls[0][:2] == calls[1][:2] == (3, 4) and calls[1][2] == "OpenVINORunner"
    assert np.abs(out[0] - out[1]).max() <= TOLERANCE * max(1.0, float(np.abs(out[0]).max()))


def test_interval_1_is_todays_sampling_exactly(exports):
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    plain, cached, _ = exports
    with open_runner(plain, "ort-cpu") as runner:
        today = Sampler(runner, make_scheduler("ddim", runner.scheduler_config)).generate(2, steps=5, output="float")
        off = Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=1).generate(
            2, steps=5, output="float")
    np.testing.assert_array_equal(today, off)  # interval 1 is the same loop over the same graph
    with open_runner(cached, "ort-cpu") as runner:
        full = Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=1).generate(
            2, steps=5, output="float")
    # The step-cache export's full graph also outputs the deep feature: the same maths, float32 rounding apart
    # (values reach ~40 on this random UNet).
    np.testing.assert_allclose(full, today, rtol=0, atol=1e-3 * max(1.0, float(np.abs(today).max())))


def test_interval_needs_the_shallow_graph(exports):
    from diffprune.runtime import Sampler, make_scheduler, open_runner

    plain, _, _ = exports
    with open_runner(plain, "ort-cpu") as runner:
        with pytest.raises(DiffPruneError, match="--step-cache"):
            Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=2)
        with pytest.raises(DiffPruneError, match="cache interval 0"):
            Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=0)


def test_stable_diffusion_with_step_caching_equals_diffusers_with_deepcache(tmp_path):
    # Tiny SD with guidance: the doubled batch [uncond; cond] goes through both graphs, as in diffusers.
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from diffprune.export import export_pipeline, load_pipeline
    from diffprune.runtime.pipeline import Pipeline

    out = tmp_path / "sd"
    spec = export_pipeline("arch:tiny-sd", out, batch=(1, 1, 2), validate_batches=[1], progress=None, step_cache=1)
    assert spec["step_cache"]["blocks"] == 1 and (out / "unet" / "shallow" / "model.json").is_file()
    parts = load_pipeline("arch:tiny-sd")
    (_, text_model), = parts.text.parts
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=text_model, tokenizer=CLIPTokenizer.from_pretrained(str(out / "tokenizer")),
        unet=parts.unet, scheduler=DPMSolverMultistepScheduler.from_config({**spec["scheduler"], "use_karras_sigmas": True}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat", "a red house by the sea at night"]
    noise = np.random.default_rng(0).standard_normal((2, 4, 16, 16)).astype(np.float32)
    with Pipeline(out, "ort-cpu") as runtime:
        ours = runtime.generate(prompts, guidance=7.5, steps=6, scheduler="dpm-solver++-karras", noise=noise,
                                output="float", cache_interval=3)
        assert runtime.last_timing["unet_calls"] == 6 and runtime.last_timing["unet_shallow_s"] > 0
        # both graphs as ort-cpu runs them: attention fused (the shallow graph keeps tiny-sd's first cross-attention)
        assert runtime.runners["unet"].graph_path.name == runtime.runners["unet_shallow"].graph_path.name == "model.ort.onnx"
        assert json.loads((out / "unet" / "shallow" / "model.json").read_text())["ort_cpu"]["fused"] > 0
    with torch.no_grad(), deepcache(pipe.unet, 3):
        ref = pipe(prompts, guidance_scale=7.5, num_inference_steps=6, latents=torch.from_numpy(noise),
                   output_type="np").images  # (2, 32, 32, 3) in [0, 1]
    ours = np.clip(ours / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    assert np.abs(ours - ref).max() <= TOLERANCE
