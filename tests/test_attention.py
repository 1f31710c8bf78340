"""Attention fused for ONNX Runtime's CPU provider (export/attention.py): the tiny SD UNet's export carries
model.ort.onnx beside model.onnx, with MultiHeadAttention in place of every Attention node, sharing the weights
file; ort-cpu runs it, OpenVINO runs model.onnx, and both match diffusers within the export's 1e-3."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from diffprune.errors import DiffPruneError

TOL = 1e-3  # the export's parity with diffusers (fp32 validation itself holds 1e-4)


@pytest.fixture(scope="module")
def tiny_sd_unet():
    from diffprune.sources.unet import build_unet

    return build_unet("tiny-sd")


@pytest.fixture(scope="module")
def fused_export(tmp_path_factory, tiny_sd_unet):
    from diffprune.export import export_unet
    from diffprune.sources.architectures import SD_SCHEDULER

    out = tmp_path_factory.mktemp("attn") / "unet"
    export_unet(tiny_sd_unet, out, SD_SCHEDULER, {"source": "arch:tiny-sd"}, batch=(1, 2, 2), validate_batches=[2])
    return out


def export_result_files(folder):
    from diffprune.export import ExportResult

    meta = json.loads((folder / "model.json").read_text())
    return ExportResult(folder, folder / "model.onnx", meta, 0.0).files


def _ops(path):
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def _feeds(unet, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    s = unet.config.sample_size
    return {"sample": rng.standard_normal((batch, unet.config.in_channels, s, s)).astype(np.float32),
            "timestep": np.array([1.0, 700.0][:batch], dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, unet.config.cross_attention_dim)).astype(np.float32)}


def _torch(unet, feeds):
    with torch.no_grad():
        return unet(torch.from_numpy(feeds["sample"]), torch.from_numpy(feeds["timestep"]),
                    encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"])).sample.numpy()


def test_export_writes_fused_graph_sharing_weights(fused_export, tiny_sd_unet):
    meta = json.loads((fused_export / "model.json").read_text())
    attentions = sum(isinstance(m, torch.nn.Module) and type(m).__name__ == "Attention" for m in tiny_sd_unet.modules())
    record = meta["ort_cpu"]
    assert record["file"] == "model.ort.onnx" and record["op"] == "com.microsoft.MultiHeadAttention"
    assert record["fused"] == attentions == 8 and record["left"] == 0  # self- and cross-attention of 4 blocks
    assert record["validation"]["passed"] and record["validation"]["max_abs_error"] <= 1e-4
    assert meta["opset"] == 23
    portable, fused = _ops(fused_export / "model.onnx"), _ops(fused_export / "model.ort.onnx")
    assert portable.count("Attention") == 8 and "MultiHeadAttention" not in portable
    assert fused.count("MultiHeadAttention") == 8 and "Attention" not in fused and "Softmax" not in fused
    assert "GroupNormalization" not in fused and fused.count("InstanceNormalization") == portable.count("GroupNormalization")
    # One weights file: the fused graph's tensors point into model.onnx.data.
    assert sorted(p.name for p in fused_export.iterdir()) == ["model.json", "model.onnx", "model.onnx.data", "model.ort.onnx"]
    assert [p.name for p in export_result_files(fused_export)] == ["model.onnx", "model.onnx.data", "model.ort.onnx"]
    graph = onnx.load(str(fused_export / "model.ort.onnx"), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert (fused_export / "model.ort.onnx").stat().st_size < (fused_export / "model.onnx.data").stat().st_size / 4


def test_ort_cpu_runs_fused_graph_and_matches_diffusers(fused_export, tiny_sd_unet):
    from diffprune.runtime import open_runner

    feeds = _feeds(tiny_sd_unet)
    ref = _torch(tiny_sd_unet, feeds)
    with open_runner(fused_export, "ort-cpu") as runner:
        assert runner.graph_path.name == "model.ort.onnx"
        got = runner.run_feeds(feeds)["out_sample"]
    assert np.abs(got - ref).max() <= TOL
    import onnxruntime as ort

    unfused = ort.InferenceSession(str(fused_export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(got - unfused.run(["out_sample"], feeds)[0]).max() <= 1e-4


def test_openvino_reads_the_portable_graph(fused_export, tiny_sd_unet):
    pytest.importorskip("openvino")
    from diffprune.runtime import open_runner

    feeds = _feeds(tiny_sd_unet, seed=2)
    with open_runner(fused_export, "openvino@f32") as runner:
        got = runner.run_feeds(feeds)["out_sample"]
    assert np.abs(got - _torch(tiny_sd_unet, feeds)).max() <= TOL


def test_no_fuse_attention_keeps_the_plain_graph(tmp_path, monkeypatch):
    """--no-fuse-attention (and fp16, the TorchScript exporter, inline weights, a UNet without attention) keep
    today's graph: the opset asked for, no model.ort.onnx. Checked on the options given to the exporter, without
    a second minute-long export."""
    import diffprune.export.onnx as onnx_export
    from diffprune.export import export_unet
    from diffprune.sources.architectures import SD_SCHEDULER
    from diffprune.sources.unet import build_unet

    seen = []

    class Stop(Exception):
        pass

    def fake_export(wrapper, example, outputs, opset, batch, dynamic_hw, exporter, **kw):
        seen.append(opset)
        raise Stop

    monkeypatch.setattr(onnx_export, "_export", fake_export)
    unet = build_unet("tiny-sd")
    cases = (dict(fuse_attention=False), dict(dtype="fp16"), dict(exporter="torchscript"), dict(weights="inline"), dict())
    for options in cases:
        with pytest.raises(Stop):
            export_unet(unet, tmp_path / "x", SD_SCHEDULER, {}, opset=18, **options)
    from diffusers import UNet2DModel

    plain = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        norm_num_groups=4, add_attention=False)
    with pytest.raises(Stop):  # a UNet without attention keeps its graph too
        export_unet(plain, tmp_path / "y", {}, {}, opset=18)
    assert seen == [18, 18, 18, 18, 23, 18]


def test_missing_fused_graph_is_refused(fused_export, tmp_path):
    from diffprune.runtime import open_runner

    broken = tmp_path / "broken"
    shutil.copytree(fused_export, broken)
    (broken / "model.ort.onnx").unlink()
    with pytest.raises(DiffPruneError, match=r"model.ort.onnx' is missing; the export folder .* is incomplete"):
        with open_runner(broken, "ort-cpu"):
            pass


def test_graph_file_per_backend():
    from diffprune.runtime.formats import graph_file

    meta = {"file": "model.onnx", "ort_cpu": {"file": "model.ort.onnx"}}
    assert graph_file(meta, "ort-cpu") == "model.ort.onnx"
    assert graph_file(meta, "openvino") == graph_file(meta, "ort-cuda") == "model.onnx"
    assert graph_file({"file": "model.onnx", "ort_cpu": None}, "ort-cpu") == "model.onnx"


def _attention_graph(**attrs):
    """One ONNX Attention over BNSH inputs (B, 2 heads, S, 4), optionally with a mask input."""
    mask = attrs.pop("mask", False)
    shape = [1, 2, 6, 4]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"]
    names = ["q", "k", "v"]
    if mask:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [6, 6]))
        names.append("m")
    node = helper.make_node("Attention", names, ["o"], name="attn", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("attrs, fused", [({}, 1), ({"scale": 0.3}, 1), ({"is_causal": 1}, 0), ({"mask": True}, 0)])
def test_fuse_attention_rewrites_only_what_mha_computes_alike(attrs, fused):
    import onnxruntime as ort

    from diffprune.export.attention import fuse_attention

    model = _attention_graph(**attrs)
    out, report = fuse_attention(model)
    assert (report["fused"], report["left"]) == (fused, 1 - fused)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 6, 4)).astype(np.float32) for n in "qkv"}
    if attrs.get("mask"):
        feeds["m"] = np.zeros((6, 6), np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(before - after).max() <= 1e-5
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MultiHeadAttention") == fused and ops.count("Attention") == 1 - fused


def test_cli_fuses_attention_unless_told_not_to():
    from diffprune.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["export", "arch:tiny-sd", "out"]).fuse_attention is True
    assert parser.parse_args(["export", "arch:tiny-sd", "out", "--no-fuse-attention"]).fuse_attention is False


@pytest.mark.parametrize("shape", [[2, 8, 6], [2, 8, 3, 3]])  # diffusers Attention's norm over (B, C, H*W); images
def test_group_norm_as_instance_norm_matches(shape):
    import onnxruntime as ort

    from diffprune.export.attention import ort_cpu_graph

    rng = np.random.default_rng(0)
    scale, bias = (helper.make_tensor(n, TensorProto.FLOAT, [8], rng.standard_normal(8).tolist()) for n in ("s", "b"))
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4, epsilon=1e-5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializer=[scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    out, report = ort_cpu_graph(model)
    assert report["group_norms_as_instance_norm"] == 1 and "GroupNormalization" not in [n.op_type for n in out.graph.node]
    x = {"x": rng.standard_normal(shape).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert after.shape == before.shape and np.abs(before - after).max() <= 1e-5
