"""Decoder pruning (issue 24, item 1): the VAE/VQ decoder's couplings, the pruned autoencoder in a pipeline folder,
its distillation with exact resume, and a pipeline with a pruned decoder exported, sampled torch-free (equal to
diffusers' own pipeline on the same modules) and benched per component."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffprune  # noqa: E402
from diffprune import DiffPruneError  # noqa: E402
from diffprune.cli import main  # noqa: E402
from diffprune.pruning.decoder import count_decoder, prune_decoder  # noqa: E402
from diffprune.sources.vae import build_vae, build_vq, load_vae  # noqa: E402


def _check_couplings(dense, pruned):
    """Every width the decoder must keep is kept, GroupNorms divide, the mid attention is consistent, the
    encoder is untouched, and the decode runs."""
    assert pruned.post_quant_conv.in_channels == pruned.post_quant_conv.out_channels == dense.config.latent_channels
    assert pruned.decoder.conv_out.out_channels == dense.config.out_channels
    for m in pruned.decoder.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.num_groups == dense.config.norm_num_groups
    attn = pruned.decoder.mid_block.attentions[0]
    width = attn.to_q.out_features
    assert attn.to_k.out_features == attn.to_v.out_features == width == attn.inner_dim
    assert attn.to_out[0].out_features == attn.group_norm.num_channels == attn.to_q.in_features  # residual add
    assert width < dense.decoder.mid_block.attentions[0].to_q.out_features  # the attention was pruned too
    for (name, a), (_, b) in zip(dense.encoder.state_dict().items(), pruned.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    z = torch.randn(2, dense.config.latent_channels, 16, 16)
    with torch.no_grad():
        assert pruned.decode(z).sample.shape == dense.decode(z).sample.shape == (2, 3, 32, 32)


def test_vae_decoder_prunes_with_its_couplings_and_gradient_importance():
    vae = build_vae("tiny")
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    pruned, report = prune_decoder(vae, method="diff-pruning", ratio=0.5, latents=latents, round_to=1)
    _check_couplings(vae, pruned)
    assert report.component == "vae_decoder" and report.macs_after < 0.6 * report.macs_before
    assert report.params_after < report.params_before and report.latent_shape == [4, 16, 16]
    assert len(report.losses) == 3 and all(x > 0 for x in report.losses)  # a gradient reached the weights
    assert count_decoder(pruned, (16, 16)) == (report.macs_after, report.params_after)
    assert vae.decoder.conv_in.out_channels == 16  # the input autoencoder is not modified
    # The gradient criterion ranks channels otherwise than the weights' magnitude does.
    by_magnitude, _ = prune_decoder(vae, method="magnitude", ratio=0.5, round_to=1)
    assert any(not torch.equal(a, b) for a, b in zip(pruned.decoder.state_dict().values(),
                                                     by_magnitude.decoder.state_dict().values()))


def test_vq_decoder_keeps_its_codebook_and_meets_a_mac_target():
    vq = build_vq("tiny")
    pruned, report = prune_decoder(vq, method="magnitude", target_macs=0.5, round_to=1)
    _check_couplings(vq, pruned)
    assert report.component == "vq_decoder" and report.macs_after <= 0.5 * report.macs_before
    assert torch.equal(pruned.quantize.embedding.weight, vq.quantize.embedding.weight)


def test_bad_decoder_options_are_clear_errors():
    vae = build_vae("tiny")
    with pytest.raises(DiffPruneError, match="needs calibration|calibration images"):
        prune_decoder(vae, method="diff-pruning", ratio=0.5)
    with pytest.raises(DiffPruneError, match="ratio"):
        prune_decoder(vae, method="magnitude", ratio=1.5)
    with pytest.raises(DiffPruneError, match="AutoencoderKL or a VQModel"):
        prune_decoder(torch.nn.Linear(2, 2), method="magnitude", ratio=0.5)


@pytest.fixture(scope="module")
def pruned_sd(tmp_path_factory):
    """arch:tiny-sd with its UNet and decoder pruned by the CLI."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("decoder") / "pruned"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["prune", "arch:tiny-sd", str(out), "--components", "unet,decoder", "--method", "magnitude",
                     "--ratio", "0.5", "--round-to", "4", "--quiet"]) == 0
    (out.parent / "printed.txt").write_text(printed.getvalue())  # the reports the CLI printed
    return out


def test_the_unet_report_names_both_pruned_components(pruned_sd):
    """The UNet's report line on conditioning said "only the UNet is pruned" when the decoder was pruned too."""
    printed = (pruned_sd.parent / "printed.txt").read_text()
    assert "conditioning: text (empty-prompt zeros); the UNet and the VAE decoder are pruned, the other components " \
           "are not" in printed
    assert "only the UNet" not in printed and "vae_decoder:" in printed


def test_report_table_names_what_was_pruned():
    from diffprune.pruning.pruner import PruneReport

    report = PruneReport(method="magnitude", ratio=0.5, target_macs=None, thr=0.05, round_to=8, seed=0,
                         params_before=10, params_after=5, macs_before=100, macs_after=50, layer_widths={},
                         conditioning={"kind": "class"})
    assert "conditioning: class; only the UNet is pruned" in report.table()
    assert "conditioning: class; the UNet and the VQ decoder are pruned, the other components are not" in \
        report.table(pruned=("the UNet", "the VQ decoder"))


def test_a_pruned_decoder_is_saved_in_the_pipeline_and_loads_back(pruned_sd, tmp_path):
    info = json.loads((pruned_sd / "vae" / "pruning.json").read_text())
    assert info["format"] == "diffprune.pruned-decoder/1" and info["component"] == "vae_decoder"
    assert info["pruning"]["method"] == "magnitude" and info["macs"] < info["dense_macs"]
    assert (pruned_sd / "unet" / "pruning.json").is_file()  # the UNet pruned too
    assert "_diffprune_decoder" in json.loads((pruned_sd / "model_index.json").read_text())
    vae = load_vae(pruned_sd)
    assert vae.decoder.conv_in.out_channels < build_vae("tiny").decoder.conv_in.out_channels
    again = diffprune.load(pruned_sd / "vae")  # diffprune.load takes the autoencoder folder too
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, again.decode(z).sample)
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(pruned_sd, broken)
    info["widths"]["decoder.conv_in"]["out_channels"] += 4
    (broken / "vae" / "pruning.json").write_text(json.dumps(info))
    with pytest.raises(DiffPruneError, match="do not fit the widths"):
        load_vae(broken)


def test_cli_decoder_alone_and_bad_components(tmp_path, capsys):
    out = tmp_path / "dec"
    assert main(["prune", "arch:tiny-sd", str(out), "--components", "decoder", "--method", "random", "--ratio", "0.5",
                 "--round-to", "4", "--quiet"]) == 0
    assert not (out / "unet" / "pruning.json").exists() and (out / "vae" / "pruning.json").is_file()
    assert "vae_decoder" in capsys.readouterr().out
    assert main(["prune", "arch:tiny-sd", str(tmp_path / "x"), "--components", "unet,vae", "--quiet"]) != 0
    assert "'vae' not known" in capsys.readouterr().err
    assert main(["prune", "arch:tiny", str(tmp_path / "y"), "--components", "decoder", "--method", "magnitude",
                 "--quiet"]) != 0
    assert "has no decoder to prune" in capsys.readouterr().err


def test_decoder_distillation_resumes_to_the_same_weights(pruned_sd, tmp_path):
    from diffprune.training.decoder import finetune_decoder

    common = dict(teacher="arch:tiny-sd", data="builtin:digits", num_images=16, steps=6, batch_size=4, warmup_steps=1,
                  checkpoint_every=3, checkpoint_minutes=0, progress=False, feature_kd_weight=0.5, log_every=1)
    whole = finetune_decoder(pruned_sd, tmp_path / "whole", **common)
    assert whole.losses[-1][1] < whole.losses[0][1]  # it learns the dense decoder's images

    class Stop(Exception):
        pass

    def crash(step, loss):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        finetune_decoder(pruned_sd, tmp_path / "crashed", callback=crash, **common)
    assert not (tmp_path / "crashed").exists()
    resumed = finetune_decoder(pruned_sd, tmp_path / "crashed", resume=True, **common)
    assert resumed.resumed_from == 3 and resumed.losses == whole.losses
    a, b = load_vae(tmp_path / "whole"), load_vae(tmp_path / "crashed")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    record = json.loads((tmp_path / "whole" / "vae" / "pruning.json").read_text())
    assert record["pruning"]["method"] == "magnitude" and record["finetune"]["config"]["pixel_loss"] == "l2"
    assert not (tmp_path / "whole.ckpt").exists()  # checkpoints removed once OUT is written
    with pytest.raises(DiffPruneError, match="no teacher"):
        finetune_decoder(pruned_sd, tmp_path / "t", data="builtin:digits", steps=1)
    with pytest.raises(DiffPruneError, match="pixel_loss"):
        finetune_decoder(pruned_sd, tmp_path / "t", teacher="arch:tiny-sd", pixel_loss="l3", steps=1)


def test_a_pipeline_with_a_pruned_decoder_exports_samples_torch_free_and_benches(pruned_sd, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from diffprune.evaluation.benchmark import run_bench
    from diffprune.export import export_pipeline, load_pipeline
    from test_pipeline_parity import _noise, _tokenizer, sample_without_torch, to_unit

    out = tmp_path / "onnx"
    record = export_pipeline(pruned_sd, out, batch=(1, 1, 2), validate_batches=[1], exporter="torchscript",
                             progress=None)
    assert record["decoder_pruning"]["component"] == "vae_decoder" and record["pruning"] is not None
    meta = json.loads((out / "vae_decoder" / "model.json").read_text())
    assert meta["pruning"]["pruning"]["ratio"] == 0.5 and meta["validation"]["passed"]
    parts = load_pipeline(pruned_sd)
    spec = json.loads((out / "pipeline.json").read_text())
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text.parts[0][1],
                                   tokenizer=_tokenizer(out / "tokenizer"), unet=parts.unet,
                                   scheduler=DDIMScheduler.from_config(spec["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = _noise((1, 4, 16, 16))
    with torch.no_grad():
        ref = pipe("a cat", guidance_scale=7.5, num_inference_steps=3, latents=torch.from_numpy(noise),
                   output_type="np").images
    ours = to_unit(sample_without_torch(out, tmp_path, noise, prompt="a cat", guidance=7.5, steps=3))
    assert ours.shape == ref.shape == (1, 32, 32, 3) and np.abs(ours - ref).max() <= 1e-3
    results = run_bench([out], backend="ort-cpu", steps=2, runs=1, threads=1, scheduler=None, prompt="a cat",
                        progress=False)
    for row in results["batches"][1].values():
        assert set(row["parts_ms"]) == {"text_encoder", "unet", "decoder", "sampler"}
        assert row["parts_ms"]["decoder"] > 0
