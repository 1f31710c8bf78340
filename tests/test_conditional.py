"""Conditional UNets (class labels, Stable Diffusion-like cross-attention, SDXL-like added conditioning)
through the same prune -> save -> load path as the pixel UNet2DModel."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from diffusers.models.activations import GEGLU
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.transformers.transformer_2d import Transformer2DModel

import diffprune
from diffprune import DiffPruneError
from diffprune.cli import main
from diffprune.sources.conditioning import TEXT_TOKENS, conditioning
from diffprune.sources.architectures import ARCHITECTURES
from diffprune.sources.unet import build_unet, example_inputs, unet_class
from diffprune.sources.loader import load_source
from diffprune.sources.folders import pipeline_component

CONDITIONAL = ["tiny-class", "tiny-sd", "tiny-sdxl"]
TEXT = ["tiny-sd", "tiny-sdxl"]


@pytest.fixture(scope="module")
def dense():
    return {arch: build_unet(arch) for arch in CONDITIONAL}


@pytest.fixture(scope="module")
def pruned(dense):
    """Each tiny conditional model at ratio 0.5 (magnitude: no data needed)."""
    return {arch: diffprune.prune(m, method="magnitude", ratio=0.5, progress=False) for arch, m in dense.items()}


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def _inputs(model, batch=2, seed=0):
    torch.manual_seed(seed)
    inputs = example_inputs(model, batch=batch)
    inputs["timestep"] = torch.tensor([3, 517][:batch])
    cond = conditioning(model)
    if cond.num_classes:
        inputs["class_labels"] = torch.tensor([1, 7][:batch])
    if cond.text_width:  # real prompts are not zero: a random embedding exercises cross-attention
        inputs["encoder_hidden_states"] = torch.randn(batch, TEXT_TOKENS, cond.text_width)
    if cond.added:
        inputs["added_cond_kwargs"]["text_embeds"] = torch.randn(batch, cond.pooled_width)
    return inputs


# --- sources ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, params", [
    ("sd15", 859_520_964),  # runwayml/stable-diffusion-v1-5 unet
    ("sd21-base", 865_910_724),  # stabilityai/stable-diffusion-2-1-base unet
    ("sdxl", 2_567_463_684),  # stabilityai/stable-diffusion-xl-base-1.0 unet
    ("ldm-celebahq-256", 274_056_163),  # CompVis/ldm-celebahq-256 unet: LDM-4 CelebA-HQ, 274M in the LDM paper
])
def test_real_size_builders_have_the_published_parameter_counts(arch, params):
    config = dict(ARCHITECTURES[arch])
    cls = unet_class(config)
    config.pop("_class_name", None)
    with torch.device("meta"):  # shapes only: 860M-2.6B parameters are not allocated
        model = cls(**config)
    assert sum(p.numel() for p in model.parameters()) == params


def test_conditioning_is_read_from_the_config(dense, tiny):
    assert conditioning(tiny).kind == "none"
    assert conditioning(dense["tiny-class"]).num_classes == 10
    sd = conditioning(dense["tiny-sd"])
    assert (sd.kind, sd.text_width, sd.text_tokens) == ("text", 24, 77)
    xl = conditioning(dense["tiny-sdxl"])
    assert (xl.kind, xl.text_width, xl.pooled_width) == ("text+text_time", 32, 80 - 6 * 8)
    assert conditioning(ARCHITECTURES["sdxl"]).pooled_width == 1280  # OpenCLIP-G's pooled width


def _pipeline(tmp_path, unet):
    """A StableDiffusionPipeline.save_pretrained layout holding just the UNet and the scheduler."""
    from diffusers import PNDMScheduler

    folder = tmp_path / "pipe"
    unet.save_pretrained(folder / "unet")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  skip_prk_steps=True).save_config(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "PNDMScheduler"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_pipeline_folder_gives_its_unet_and_scheduler(dense, tmp_path):
    folder = _pipeline(tmp_path, dense["tiny-sd"])
    model, scheduler, source = load_source(str(folder))
    assert type(model).__name__ == "UNet2DConditionModel" and source["format"] == "diffusers"
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["beta_schedule"] == "scaled_linear"
    x = _inputs(model)
    assert torch.equal(_run(model, x), _run(dense["tiny-sd"], x))


def test_a_pipeline_folder_without_its_unet_or_vae_is_refused(dense, tmp_path, capsys):
    import shutil

    folder = _pipeline(tmp_path, dense["tiny-sd"])
    with pytest.raises(DiffPruneError, match=r"has no vae/ subfolder .*vae is listed but its folder is missing"):
        pipeline_component(folder, "vae")
    shutil.rmtree(folder / "unet")
    with pytest.raises(DiffPruneError, match=r"has no unet/ subfolder"):
        load_source(str(folder))
    out = tmp_path / "out"
    assert main(["prune", str(folder), str(out), "--method", "magnitude", "--ratio", "0.3", "--quiet"]) == 2
    assert "has no unet/ subfolder" in capsys.readouterr().err
    assert not out.exists()


# --- what Diff-Pruning feeds the UNet -------------------------------------------------------------

@pytest.fixture
def few_sampling_steps(monkeypatch):
    """generate:N draws its calibration samples in 2 DDIM steps, not 50: these tests are about what
    the UNet is fed, not about the samples' quality."""
    import functools

    import diffprune.data.generate

    monkeypatch.setattr(diffprune.data.generate, "generate", functools.partial(diffprune.data.generate.generate, steps=2))


def _record_calls(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append({**dict(zip(("sample", "timestep"), args)), **kwargs, "grad": torch.is_grad_enabled()})

    model.register_forward_pre_hook(hook, with_kwargs=True)  # copied along with the model by prune's deepcopy
    return calls


def test_gradients_are_taken_under_the_empty_prompt_and_sdxl_time_ids(dense, few_sampling_steps):
    model = copy.deepcopy(dense["tiny-sdxl"])
    calls = _record_calls(model)
    _, report = diffprune.prune(model, method="diff-pruning", ratio=0.3, data="generate:3", max_timesteps=2,
                                micro_batch=2, progress=False)
    assert report.timesteps_used == [0, 1] and report.conditioning["kind"] == "text+text_time"
    fed = [c for c in calls if c["grad"] and c["timestep"].max() < 2]  # not tracing (t = 10), not sampling (no grad)
    assert [c["sample"].shape[0] for c in fed] == [2, 1, 2, 1]  # 2 timesteps x micro-batches of 2 + 1
    for c in fed:
        b = c["sample"].shape[0]
        assert c["encoder_hidden_states"].shape == (b, 77, 32) and not c["encoder_hidden_states"].any()
        assert c["added_cond_kwargs"]["text_embeds"].shape == (b, 32)
        assert c["added_cond_kwargs"]["time_ids"].tolist() == [[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * b


def test_class_labels_are_drawn_uniformly_with_the_seed_or_given(dense):
    model = copy.deepcopy(dense["tiny-class"])
    calls = _record_calls(model)
    kw = dict(method="diff-pruning", ratio=0.3, data="builtin:digits", num_images=16, max_timesteps=1, progress=False,
              resize="center-crop")
    a = diffprune.prune(model, seed=0, **kw)[1]
    drawn = torch.cat([c["class_labels"] for c in calls if c["sample"].shape[0] == 16])
    assert 0 <= drawn.min() and drawn.max() < 10 and len(drawn.unique()) >= 5  # uniform over 10 classes
    assert a.losses == diffprune.prune(model, seed=0, **kw)[1].losses  # same seed, same labels, same loss
    calls.clear()
    given = diffprune.prune(model, seed=0, class_labels=[3, 4], **kw)[1]
    assert torch.cat([c["class_labels"] for c in calls if c["sample"].shape[0] == 16]).tolist() == [3, 4] * 8
    assert given.losses != a.losses


@pytest.mark.parametrize("labels, fragment", [([10], r"\[10\] out of range.*0\.\.9"), ([-1, 2], r"\[-1\]"), ([], "class_labels is empty")])
def test_a_class_label_out_of_range_is_refused(dense, labels, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        diffprune.prune(dense["tiny-class"], method="magnitude", ratio=0.3, class_labels=labels, progress=False)


def test_class_labels_for_a_model_without_classes_are_refused(tiny):
    with pytest.raises(DiffPruneError, match="no class embedding"):
        diffprune.prune(tiny, method="magnitude", ratio=0.3, class_labels=[1], progress=False)


def test_cli_class_label_out_of_range_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["prune", "arch:tiny-class", str(out), "--method", "diff-pruning", "--data", "builtin:digits",
                 "--num-images", "2", "--max-timesteps", "1", "--class-labels", "3,12", "--quiet"]) == 2
    assert "[12] out of range" in capsys.readouterr().err
    assert not out.exists()


def test_images_for_a_latent_text_model_without_a_vae_are_refused_with_what_to_use(dense):
    with pytest.raises(DiffPruneError, match="denoises latents of its pipeline's VAE, and no VAE was given.*generate:N"):
        diffprune.prune(dense["tiny-sd"], method="diff-pruning", ratio=0.3, data="builtin:digits", progress=False)


def test_zero_text_gives_cross_attention_no_gradient_so_it_is_ranked_by_magnitude(dense, tmp_path, few_sampling_steps):
    # Through a pipeline folder, so the gradients use its scheduler (SD's scaled_linear PNDM config).
    model, scheduler, _ = load_source(str(_pipeline(tmp_path, dense["tiny-sd"])))
    _, report = diffprune.prune(model, method="diff-pruning", ratio=0.5, data="generate:2", scheduler_config=scheduler,
                                max_timesteps=1, progress=False)
    assert report.timesteps_used == [0] and report.losses[0] > 0
    assert report.no_gradient_groups and all(".attn2." in name for name in report.no_gradient_groups)
    # every cross-attention (1 transformer block down, 1 mid, 2 up) is one such group
    attn2 = [n for n, m in dense["tiny-sd"].named_modules() if n.endswith("attn2")]
    assert len(report.no_gradient_groups) == len(attn2) == 4
    assert "4 channel groups got no gradient and were ranked by weight magnitude" in report.table()


# --- couplings ----------------------------------------------------------------------------------

def _cross_attentions(model):
    return [m for m in model.modules() if isinstance(m, Attention) and m.is_cross_attention]


@pytest.mark.parametrize("arch", TEXT)
def test_cross_attention_keeps_the_text_width_and_equal_heads(arch, dense, pruned):
    model, report = pruned[arch]
    text_width = conditioning(model).text_width
    dense_attn = [m for m in dense[arch].modules() if isinstance(m, Attention)]
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(_cross_attentions(model)) >= 2
    for a, d in zip(attn, dense_attn):
        if a.is_cross_attention:
            assert a.to_k.in_features == a.to_v.in_features == text_width
        assert a.heads == d.heads
        assert a.to_q.out_features == a.to_k.out_features == a.to_v.out_features == a.to_out[0].in_features == a.inner_dim
        assert a.inner_dim % a.heads == 0 and a.inner_dim < d.inner_dim
        assert a.scale == pytest.approx((a.inner_dim // a.heads) ** -0.5)
    changed = [after for before, after in report.layer_widths.values() if before != after]
    assert changed and all(w % 8 == 0 for w in changed)


@pytest.mark.parametrize("arch", TEXT)
def test_geglu_value_and_gate_halves_lose_the_same_channels(arch, dense):
    # Tag every GEGLU output channel with its dense index (proj bias) and every input column of the
    # following Linear with the index of the value channel feeding it; prune at random; read the tags.
    model = copy.deepcopy(dense[arch])
    geglus = [(n, m) for n, m in model.named_modules() if isinstance(m, GEGLU)]
    assert geglus
    with torch.no_grad():
        for name, geglu in geglus:
            geglu.proj.bias.copy_(torch.arange(geglu.proj.out_features, dtype=torch.float32))
            ff_out = model.get_submodule(name.rsplit(".", 2)[0] + ".net.2")
            ff_out.weight[:] = torch.arange(ff_out.in_features, dtype=torch.float32)  # every row: rows are pruned too
    half = {name: g.proj.out_features // 2 for name, g in geglus}
    pruned_model, _ = diffprune.prune(model, method="random", ratio=0.5, seed=5, progress=False)
    for name, geglu in ((n, m) for n, m in pruned_model.named_modules() if isinstance(m, GEGLU)):
        kept = geglu.proj.out_features // 2
        assert 0 < kept < half[name] and kept % 8 == 0
        tags = geglu.proj.bias.round().long().tolist()
        value, gate = tags[:kept], tags[kept:]
        assert max(value) < half[name] and [g - half[name] for g in gate] == value
        ff_out = pruned_model.get_submodule(name.rsplit(".", 2)[0] + ".net.2")
        assert ff_out.weight[0].round().long().tolist() == value  # the value channels the next layer reads


@pytest.mark.parametrize("arch", TEXT)
def test_transformer_projections_and_norms_stay_consistent(arch, pruned):
    model = pruned[arch][0]
    blocks = [m for m in model.modules() if isinstance(m, Transformer2DModel)]
    assert blocks
    for t in blocks:
        lin = isinstance(t.proj_in, nn.Linear)
        c_in = t.proj_in.in_features if lin else t.proj_in.in_channels
        inner = t.proj_in.out_features if lin else t.proj_in.out_channels
        c_out = t.proj_out.out_features if lin else t.proj_out.out_channels
        assert t.norm.num_channels == c_in == c_out and c_in % t.norm.num_groups == 0
        assert (t.in_channels, t.inner_dim, t.out_channels) == (c_in, inner, c_out)
        for block in t.transformer_blocks:
            for norm in (block.norm1, block.norm2, block.norm3):
                assert norm.normalized_shape == (inner,)
            assert block.attn1.to_q.in_features == block.attn2.to_q.in_features == block.ff.net[2].out_features == inner
            assert block.dim == inner


def test_sdxl_added_conditioning_keeps_its_input_width(pruned, dense):
    model = pruned["tiny-sdxl"][0]
    assert model.add_embedding.linear_1.in_features == dense["tiny-sdxl"].add_embedding.linear_1.in_features == 80
    assert model.add_embedding.linear_1.out_features < dense["tiny-sdxl"].add_embedding.linear_1.out_features


def test_class_embedding_shrinks_with_the_time_embedding(pruned, dense):
    model = pruned["tiny-class"][0]
    assert model.class_embedding.num_embeddings == 10
    assert model.class_embedding.embedding_dim == model.time_embedding.linear_2.out_features
    assert model.class_embedding.embedding_dim < dense["tiny-class"].class_embedding.embedding_dim


def _with_processor(model, processor):
    model = copy.deepcopy(model)
    model.set_attn_processor(processor)
    return model


@pytest.mark.parametrize("arch, prune_heads", [("tiny-sd", False), ("tiny-sdxl", False), ("tiny-sdxl", True)])
def test_classic_and_sdpa_attention_agree_after_pruning(arch, prune_heads, dense, pruned):
    if prune_heads:
        model, _ = diffprune.prune(dense[arch], method="magnitude", ratio=0.5, prune_heads=True, round_to=1, progress=False)
        assert any(a.heads < d.heads for a, d in zip(_cross_attentions(model), _cross_attentions(dense[arch])))
    else:
        model = pruned[arch][0]
    x = _inputs(model)
    classic, sdpa = _run(_with_processor(model, AttnProcessor()), x), _run(_with_processor(model, AttnProcessor2_0()), x)
    torch.testing.assert_close(classic, sdpa, rtol=1e-4, atol=1e-5)
    # The check has teeth: a stale scale (the dense head width's) changes the classic processor's output.
    stale = _with_processor(model, AttnProcessor())
    for a, d in zip([m for m in stale.modules() if isinstance(m, Attention)],
                    [m for m in dense[arch].modules() if isinstance(m, Attention)]):
        a.scale = d.scale
    if not prune_heads:  # removing whole heads keeps the head width, hence the scale
        assert (_run(stale, x) - sdpa).abs().max() > 1e-4


@pytest.mark.parametrize("arch", CONDITIONAL)
def test_pruned_model_trains_one_step(arch, pruned):
    model = copy.deepcopy(pruned[arch][0]).train()
    x = _inputs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.mse_loss(model(**x).sample, torch.randn_like(x["sample"]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2


# --- MACs ---------------------------------------------------------------------------------------

def test_macs_are_counted_with_the_77_token_text_input(dense):
    import contextlib
    import io

    import torch_pruning as tp

    from diffprune.sources.unet import count_macs_params

    model = dense["tiny-sd"]
    macs, _ = count_macs_params(model)
    one_token = example_inputs(model)
    one_token["encoder_hidden_states"] = one_token["encoder_hidden_states"][:, :1]
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        macs_1, _ = tp.utils.count_ops_and_params(model, one_token)
    # Only to_k and to_v of each cross-attention see the text: 76 more tokens x (text width x inner) each.
    expected = sum(76 * (a.to_k.in_features * a.to_k.out_features + a.to_v.in_features * a.to_v.out_features)
                   for a in _cross_attentions(model))
    assert macs - macs_1 == expected


def test_target_macs_on_a_text_conditioned_unet(dense):
    _, report = diffprune.prune(dense["tiny-sd"], method="magnitude", target_macs=0.5, progress=False)
    assert 0.35 < report.macs_after / report.macs_before <= 0.5


# --- safe save / load ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", CONDITIONAL)
def test_save_load_is_bit_identical_and_records_the_conditioning(arch, pruned, tmp_path):
    model, report = pruned[arch]
    folder = diffprune.save(model, tmp_path / arch, info={"pruning": report.to_dict()})
    info = json.loads((folder / "pruning.json").read_text())
    assert info["model_class"] == type(model).__name__
    assert info["conditioning"] == conditioning(model).to_dict()
    loaded = diffprune.load(folder)
    assert type(loaded) is type(model)
    x = _inputs(model)
    assert torch.equal(_run(loaded, x), _run(model, x))
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    via_source, _, source = load_source(str(folder))
    assert source["format"] == "diffprune" and torch.equal(_run(via_source, x), _run(model, x))


def test_a_recorded_class_that_disagrees_with_config_is_refused(pruned, tmp_path):
    model, _ = pruned["tiny-sd"]
    folder = diffprune.save(model, tmp_path / "m")
    info = json.loads((folder / "pruning.json").read_text())
    info["model_class"] = "UNet2DModel"
    (folder / "pruning.json").write_text(json.dumps(info))
    with pytest.raises(DiffPruneError, match="names a UNet2DConditionModel but pruning.json records a UNet2DModel"):
        diffprune.load(folder)


def test_cli_prunes_a_pipeline_folder_into_a_pipeline_folder(dense, tmp_path, capsys):
    folder = _pipeline(tmp_path, dense["tiny-sd"])
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text("{}")  # carried over byte for byte, whatever it holds
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), str(out), "--method", "magnitude", "--ratio", "0.3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "conditioning: text (empty-prompt zeros); only the UNet is pruned" in printed
    assert "a pipeline folder: the pruned UNet in unet/" in printed
    info = json.loads((out / "unet" / "pruning.json").read_text())
    assert info["source"]["source"] == str((folder / "unet").resolve())
    assert info["pruning"]["conditioning"]["text_width"] == 24
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "scaled_linear"
    assert (out / "vae" / "config.json").read_text() == "{}"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    model, scheduler, source = load_source(str(out))
    assert type(model).__name__ == "UNet2DConditionModel" and source["format"] == "diffprune"
    assert scheduler["_class_name"] == "PNDMScheduler"
    x = _inputs(model)
    assert torch.equal(_run(model, x), _run(diffprune.load(out / "unet"), x))


@pytest.mark.parametrize("arch", TEXT)
def test_a_pruned_builtin_pipeline_carries_its_text_encoders_tokenizers_and_vae(arch, pruned, tmp_path):
    from diffprune.sources.loader import FromSource

    model, _ = pruned[arch]
    out = diffprune.save(model, tmp_path / "p", pipeline=f"arch:{arch}")
    names = {p.name for p in out.iterdir()}
    two = arch == "tiny-sdxl"
    assert names == {"unet", "scheduler", "model_index.json", "vae", "text_encoder", "tokenizer"} | (
        {"text_encoder_2", "tokenizer_2"} if two else set())
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if two else "StableDiffusionPipeline")
    # The carried components are the built-in ones: the same embeddings for the same prompt.
    ours = FromSource(str(out), "text_encoder").load()(["a photo of a cat"])
    builtin = FromSource(f"arch:{arch}", "text_encoder").load()(["a photo of a cat"])
    assert torch.equal(ours.encoder_hidden_states, builtin.encoder_hidden_states)
    vae = FromSource(str(out), "vae").load()
    assert torch.equal(vae.decoder.conv_in.weight, FromSource(f"arch:{arch}", "vae").load().decoder.conv_in.weight)
    # ... and the pipeline folder is a source again: a second pruning step reads it.
    assert type(load_source(str(out))[0]) is type(model)


def test_a_pruned_conditional_unet_exports_with_its_conditioning_inputs(pruned, tmp_path):
    # Whole pipelines (text encoder, VAE decoder) are tests/test_pipeline_export.py's; here the UNet alone.
    from diffprune.export import to_onnx

    result = to_onnx(pruned["tiny-sd"][0], tmp_path / "onnx", batch=(1, 1, 2), exporter="torchscript")
    meta = result.model_json
    assert [i["name"] for i in meta["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert meta["conditioning"]["kind"] == "text" and meta["validation"]["passed"]
    assert meta["validation"]["max_abs_error"] <= 1e-4


def test_an_ldm_pipeline_is_pruned_and_fine_tuned_on_its_vq_latents(tmp_path, monkeypatch):
    """LDMPipeline (UNet2DModel over a VQModel, as ldm-celebahq-256 and the paper's ldm_prune.py): calibration
    and training images go through the VQ encoder, and the outputs are LDM pipeline folders again."""
    from diffusers import DDIMScheduler, LDMPipeline

    import diffprune.sources.vae as latents
    from diffprune.training.finetune import finetune
    from diffprune.sources.vae import build_vq

    folder = tmp_path / "ldm"
    LDMPipeline(vqvae=build_vq("tiny"), unet=build_unet("tiny-attn"), scheduler=DDIMScheduler()).save_pretrained(folder)
    shapes, encode = [], latents.encode
    monkeypatch.setattr(latents, "encode", lambda vae, x, *a: shapes.append((type(vae).__name__, tuple(x.shape))) or encode(vae, x, *a))
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), str(out), "--method", "diff-pruning", "--data", "builtin:digits", "--resize", "pad", "--ratio", "0.3",
                 "--max-timesteps", "2", "--num-images", "4", "--quiet"]) == 0
    assert shapes == [("VQModel", (4, 3, 32, 32))]  # 16x16 latents of a factor-2 VQ: 32x32 RGB images
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet", "vqvae"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    finetune(str(out), tmp_path / "ft", data="builtin:digits", resize="pad", num_images=4, steps=2, batch_size=2,
             warmup_steps=1, ema_decay=0, device="cpu", progress=False, checkpoint_every=0)
    assert shapes[-1] == ("VQModel", (2, 3, 32, 32))  # encoded batch by batch (no --precompute)
    info = json.loads((tmp_path / "ft" / "unet" / "pruning.json").read_text())["finetune"]
    assert info["vae"].startswith("VQModel (scaling_factor")
    assert (tmp_path / "ft" / "vqvae" / "config.json").is_file()


def test_a_pixel_text_model_takes_captioned_images_without_a_vae(captioned_digits):
    """arch:digits-text (1 channel, cross-attention to a tiny CLIP): captions through the text encoder, images as
    pixels; a 4-channel text UNet without a VAE stays an error (test above)."""
    from diffprune.data.latents import is_latent
    from diffprune.sources.text import build_text_encoder

    model = build_unet("digits-text")
    assert not is_latent(model, conditioning(model), None)
    pruned, report = diffprune.prune(model, method="diff-pruning", ratio=0.3, data=str(captioned_digits() / "pairs.jsonl"),
                                     text_encoder=build_text_encoder("digits-text"), max_timesteps=2, num_images=4,
                                     progress=False)
    assert report.to_dict()["no_gradient_groups"] == [] and report.macs_after < report.macs_before
    x = _inputs(pruned)
    assert _run(pruned, x).shape == (2, 1, 28, 28)
