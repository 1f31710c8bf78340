"""The pipeline sampler's own logic (runtime/pipeline.py) on fake numpy components: classifier-free
guidance in one doubled batch, seeds per image, truncation, and the errors users hit. Parity with
diffusers on real exports is in tests/test_pipeline_parity.py."""

import json
import warnings

import numpy as np
import pytest

from diffprune import DiffPruneError
from diffprune.runtime import pipeline as rp
from diffprune.runtime.runners.base import Runner
from diffprune.runtime.schedulers import make_scheduler

SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def text_encoder(feeds):
    ids = feeds["input_ids"].astype(np.float32)  # (B, 77)
    hidden = np.sin(ids[..., None] * np.linspace(0.001, 0.01, 8, dtype=np.float32))  # (B, 77, 8)
    return {"hidden_states": hidden.astype(np.float32)}


def unet(feeds):
    x, t, c = feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"]
    shift = c.mean(axis=(1, 2))[:, None, None, None]  # (B, 1, 1, 1): depends on the prompt
    return {"out_sample": (0.2 * x + shift + 0.01 * np.tanh(t / 500)[:, None, None, None]).astype(np.float32)}


def vae_decoder(feeds):
    z = feeds["latent_sample"]  # (B, 4, 8, 8) -> (B, 3, 16, 16)
    return {"sample": np.tanh(np.repeat(np.repeat(z[:, :3], 2, axis=2), 2, axis=3)).astype(np.float32)}


FAKES = {"text_encoder": text_encoder, "unet": unet, "vae_decoder": vae_decoder}
SPECS = {
    "text_encoder": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 77]}],
                     "outputs": [{"name": "hidden_states", "dtype": "float32", "shape": ["batch", 77, 8]}]},
    "unet": {"inputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 4, 8, 8]},
                        {"name": "timestep", "dtype": "float32", "shape": ["batch"]},
                        {"name": "encoder_hidden_states", "dtype": "float32", "shape": ["batch", 77, 8]}],
             "outputs": [{"name": "out_sample", "dtype": "float32", "shape": ["batch", 4, 8, 8]}],
             "in_channels": 4, "sample_size": [8, 8]},
    "vae_decoder": {"inputs": [{"name": "latent_sample", "dtype": "float32", "shape": ["batch", 4, 8, 8]}],
                    "outputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]},
}


class FakeRunner(Runner):
    backend = "fake"
    seen = []  # (component, batch) of every call, shared, to check the doubled batch
    released = []  # (component, release_after_call) of every call

    def open(self):
        return self

    def run_feeds(self, feeds):
        FakeRunner.seen.append((self.component, len(next(iter(feeds.values())))))
        FakeRunner.released.append((self.component, self.release_after_call))
        return FAKES[self.component](feeds)


@pytest.fixture
def fake_sd(tmp_path, monkeypatch):
    folder = tmp_path / "pipe"
    for name, spec in SPECS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "model.json").write_text(json.dumps(
            {"format": "diffprune.onnx/1", "component": name, "batch": {"min": 1, "opt": 2, "max": 8}, **spec}))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77,
                                                                           "pad_token": "<|endoftext|>"}))
    (folder / "pipeline.json").write_text(json.dumps({
        "format": "diffprune.pipeline/1", "kind": "text-to-image",
        "components": {n: n for n in SPECS}, "tokenizers": {"text_encoder": "tokenizer"},
        "scheduler": SCHEDULER, "guidance": {"scale": 7.5, "negative_prompt": ""},
        "latent": {"channels": 4, "sample_size": [8, 8], "scaling_factor": 0.18215, "shift_factor": None,
                   "vae_factor": 2}, "image": {"channels": 3, "size": [16, 16]}}))

    def fake_open_runner(path, backend="ort-cpu", threads=None, batch=None):
        from diffprune.runtime.artifact import describe

        _, where, meta = describe(path)
        return FakeRunner(where, meta)

    monkeypatch.setattr("diffprune.runtime.runners.open_runner", fake_open_runner)
    FakeRunner.seen.clear()
    FakeRunner.released.clear()
    return folder


def reference(prompts, negative, guidance, steps, seed):
    """The same maths written out: separate unconditional and conditional UNet calls per image."""
    from diffprune.runtime.text import ClipTokenizer

    tok = ClipTokenizer()
    sched = make_scheduler("ddim", SCHEDULER)
    sched.set_timesteps(steps)
    images = []
    for i, prompt in enumerate(prompts):
        x = np.random.default_rng([seed, i]).standard_normal((1, 4, 8, 8), dtype=np.float32)
        cond = text_encoder({"input_ids": tok([prompt]).ids})["hidden_states"]
        uncond = text_encoder({"input_ids": tok([negative]).ids})["hidden_states"]
        for t in sched.timesteps:
            ts = np.full((1,), float(t), np.float32)
            e_c = unet({"sample": x, "timestep": ts, "encoder_hidden_states": cond})["out_sample"]
            e_u = unet({"sample": x, "timestep": ts, "encoder_hidden_states": uncond})["out_sample"]
            x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
        images.append(vae_decoder({"latent_sample": x / np.float32(0.18215)})["sample"][0])
    return np.stack(images)


def test_guidance_runs_one_doubled_batch_and_matches_the_written_out_maths(fake_sd):
    prompts = ["a photo of a cat", "a red house by the sea"]
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:  # a named backend: auto's probe would call the UNet too
        images = pipe.generate(prompts, negative_prompt="blurry", guidance=5.0, steps=4, seed=3, output="float")
        timing = pipe.last_timing
    np.testing.assert_allclose(images, reference(prompts, "blurry", 5.0, 4, 3), atol=1e-5)
    unet_batches = [b for c, b in FakeRunner.seen if c == "unet"]
    assert unet_batches == [4] * 4  # 2 images -> one call of 4 ([uncond; cond]) per step
    assert [b for c, b in FakeRunner.seen if c == "text_encoder"] == [4]  # negatives and prompts in one call
    assert timing["unet_calls"] == 4 and timing["scheduler"] == "ddim" and timing["guidance"] == 5.0
    assert set(timing) >= {"text_encoder_s", "unet_s", "decoder_s", "sampler_s", "total_s"}


def test_pooled_memory_is_given_back_after_the_last_unet_call_and_each_part_call(fake_sd):
    """The UNet keeps its pooled memory between steps and gives it back at its last call, before the decoder;
    the once-per-image components give theirs back after every call (Runner.release_after_call)."""
    with rp.Pipeline(fake_sd) as pipe:
        FakeRunner.released.clear()
        pipe.generate("a cat", steps=3, guidance=7.5)
        assert not pipe.runners["unet"].release_after_call  # restored after the loop
    unet = [flag for name, flag in FakeRunner.released if name == "unet"]
    parts = {(name, flag) for name, flag in FakeRunner.released if name != "unet"}
    assert unet == [False, False, True] and parts == {("text_encoder", True), ("vae_decoder", True)}
    assert FakeRunner.released[-1] == ("vae_decoder", True)


@pytest.mark.parametrize("interval, steps, full_release, shallow_release", [
    (1, 4, [3], []), (3, 7, [6], [5]), (3, 6, [3], [5]), (2, 5, [4], [3])])
def test_step_cache_releases_each_graph_at_its_last_call(interval, steps, full_release, shallow_release):
    from diffprune.runtime.sampler import CACHE_FEATURE, StepCache

    calls = []

    class Graph:
        outputs = ["out_sample"]
        release_after_call = False

        def __init__(self, name):
            self.name = name

        def __call__(self, sample, timestep, **kw):
            calls.append((self.name, self.release_after_call))
            return sample

        def infer(self, sample, timestep, **kw):
            calls.append((self.name, self.release_after_call))
            return {"out_sample": sample, CACHE_FEATURE: sample}

    cache = StepCache(Graph("full"), Graph("shallow"), interval, steps=steps)
    for k in range(steps):
        cache(k, np.zeros(1, np.float32), np.zeros(1, np.float32))
    released = {name: [k for k, (n, flag) in enumerate(calls) if n == name and flag] for name in ("full", "shallow")}
    assert released == {"full": full_release, "shallow": shallow_release}
    assert not cache.full.release_after_call and not cache.shallow.release_after_call


def test_guidance_of_one_or_less_runs_the_prompt_alone(fake_sd):
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:
        plain = pipe.generate("a cat", guidance=1.0, steps=3, output="float")
    assert [b for c, b in FakeRunner.seen if c == "unet"] == [1] * 3
    np.testing.assert_allclose(plain, reference(["a cat"], "", 1.0, 3, 0), atol=1e-5)  # g = 1: eps = eps_c


def test_same_seed_same_images_at_any_batch(fake_sd):
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:
        one = pipe.generate("a cat", n=3, steps=3, seed=7, batch=1)
        three = pipe.generate("a cat", n=3, steps=3, seed=7, batch=3)
        other = pipe.generate("a cat", n=1, steps=3, seed=8)
    assert one.shape == (3, 16, 16, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, three)
    assert not np.array_equal(one[0], other[0])


def test_noise_replaces_the_seeded_draw_like_diffusers_latents(fake_sd):
    noise = np.random.default_rng([5, 0]).standard_normal((1, 4, 8, 8), dtype=np.float32)
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:
        a = pipe.generate("a cat", steps=3, seed=5, scheduler="euler")
        b = pipe.generate("a cat", steps=3, seed=99, scheduler="euler", noise=noise)  # scaled by init_noise_sigma
    np.testing.assert_array_equal(a, b)


def test_long_prompts_are_truncated_with_a_warning(fake_sd):
    long = "a very detailed painting of " + "a cat and " * 60
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:
        with pytest.warns(rp.PromptTruncated, match="longer than 77 tokens were truncated"):
            cut = pipe.generate(long, steps=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once per pipeline, not at every call
            again = pipe.generate(long, steps=2)
        assert pipe.notes and "truncated" in pipe.notes[0]
    np.testing.assert_array_equal(cut, again)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(prompt="a cat", guidance=-1.0), "Guidance scale -1.0 is not allowed"),
    (dict(prompt=None), "give a prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "3 negative prompts given for 2 images"),
    (dict(prompt="a cat", batch=5), r"batch 5 is outside 1..4"),
    (dict(prompt="a cat", scheduler="pndm"), "Unknown scheduler 'pndm'"),
    (dict(prompt="a cat", class_labels=[1]), "class_labels apply to class-conditional"),
    (dict(prompt="a cat", noise=np.zeros((1, 4, 4, 4), np.float32)), r"noise has shape \(1, 4, 4, 4\)"),
])
def test_bad_arguments_are_clear_errors(fake_sd, kwargs, fragment):
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe:
        with pytest.raises(DiffPruneError, match=fragment):
            pipe.generate(steps=2, **kwargs)


def test_bad_pipeline_folders_are_clear_errors(fake_sd, tmp_path):
    spec = json.loads((fake_sd / "pipeline.json").read_text())
    with pytest.raises(DiffPruneError, match="holds no pipeline.json"):
        rp.Pipeline(tmp_path)
    for change, fragment in [
        (dict(format="diffprune.pipeline/9"), "this runtime reads 'diffprune.pipeline/1'"),
        (dict(kind="video"), "of kind 'video'"),
        (dict(components={"unet": "unet", "vae_decoder": "vae_decoder"}), "without a text_encoder component"),
        (dict(components={**spec["components"], "vae_decoder": "nowhere"}), "The vae_decoder component .* is missing"),
    ]:
        (fake_sd / "pipeline.json").write_text(json.dumps({**spec, **change}))
        with pytest.raises(DiffPruneError, match=fragment):
            rp.Pipeline(fake_sd, backend="ort-cpu")
    (fake_sd / "pipeline.json").write_text(json.dumps({**spec, "kind": "latent"}))
    with pytest.raises(DiffPruneError, match="takes encoder_hidden_states, but the pipeline is latent"):
        rp.Pipeline(fake_sd, backend="ort-cpu").open()
    (fake_sd / "pipeline.json").write_text(json.dumps({**spec, "scheduler": {"_class_name": "PNDMScheduler"}}))
    with rp.Pipeline(fake_sd, backend="ort-cpu") as pipe, pytest.raises(DiffPruneError, match="PNDMScheduler, which the runtime"):
        pipe.generate("a cat", steps=2)
    (fake_sd / "pipeline.json").write_text(json.dumps(spec))
    (fake_sd / "tokenizer" / "tokenizer_config.json").unlink()
    (fake_sd / "tokenizer").rmdir()
    with pytest.raises(DiffPruneError, match="tokenizer folder .* is missing"):
        rp.Pipeline(fake_sd, backend="ort-cpu").open()


def test_scheduler_names_follow_the_config_class():
    assert rp.scheduler_name({"_class_name": "EulerDiscreteScheduler"}) == "euler"
    assert rp.scheduler_name({"_class_name": "DPMSolverMultistepScheduler"}) == "dpm-solver++"


def test_named_inputs_are_checked_against_model_json(fake_sd):
    from diffprune.runtime.artifact import describe

    _, where, meta = describe(fake_sd / "unet")
    unet = FakeRunner(where, meta)
    x, t = np.zeros((2, 4, 8, 8), np.float32), np.zeros(2, np.float32)
    ehs = np.zeros((2, 77, 8), np.float32)
    assert unet(x, t, encoder_hidden_states=ehs).shape == (2, 4, 8, 8)
    assert unet.conditioning == ["encoder_hidden_states"] and unet.calls == 1
    with pytest.raises(DiffPruneError, match="takes the inputs sample, timestep, encoder_hidden_states; missing "
                                             "encoder_hidden_states"):
        unet(x, t)
    with pytest.raises(DiffPruneError, match="unknown class_labels"):
        unet(x, t, encoder_hidden_states=ehs, class_labels=np.zeros(2, np.int64))
    with pytest.raises(DiffPruneError, match=r"encoder_hidden_states .* has shape \(2, 77, 9\)"):
        unet(x, t, encoder_hidden_states=np.zeros((2, 77, 9), np.float32))
    with pytest.raises(DiffPruneError, match="disagree on the batch size"):
        unet(x, t, encoder_hidden_states=ehs[:1])
    _, where, meta = describe(fake_sd / "text_encoder")
    encoder = FakeRunner(where, meta)
    assert encoder.infer(input_ids=np.zeros((3, 77), np.int64))["hidden_states"].shape == (3, 77, 8)
    with pytest.raises(DiffPruneError, match="input_ids of the text_encoder .* must be a int64 numpy array, got int32"):
        encoder.infer(input_ids=np.zeros((3, 77), np.int32))
    with pytest.raises(DiffPruneError, match="outside this artifact's range 1..8"):
        encoder.infer(input_ids=np.zeros((9, 77), np.int64))
    with pytest.raises(DiffPruneError, match="without a sample input, not a UNet"):
        encoder(x, t)
