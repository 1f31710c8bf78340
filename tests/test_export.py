"""ONNX export: validated fp32/fp16 graphs of dense and pruned tiny UNets, Triton repositories, bad inputs."""

import json
import re

import numpy as np
import onnx
import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.export import build_engine, to_onnx, verify_export, weights_sha256
from diffprune.export.validate import validate


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory):
    from diffprune.sources.unet import build_unet

    model, report = diffprune.prune(build_unet("tiny-attn"), method="magnitude", ratio=0.4, progress=False)
    return diffprune.save(model, tmp_path_factory.mktemp("p") / "pruned", info={"pruning": report.to_dict()})


@pytest.fixture(scope="module")
def pruned_export(pruned_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("e") / "onnx"
    return to_onnx(pruned_folder, out, batch=(1, 2, 4), triton=out.parent / "triton")


def test_pruned_export_is_validated_and_self_describing(pruned_export, pruned_folder):
    meta = json.loads((pruned_export.out_dir / "model.json").read_text())
    assert meta["validation"]["passed"] and meta["validation"]["max_abs_error"] <= 1e-4
    assert [c["batch"] for c in meta["validation"]["cases"]] == [1, 2, 4]
    assert meta["inputs"] == [
        {"name": "sample", "dtype": "float32", "shape": ["batch", 3, 16, 16]},
        {"name": "timestep", "dtype": "float32", "shape": ["batch"]},
    ]
    assert meta["outputs"][0]["name"] == "out_sample"
    assert meta["scheduler"]["num_train_timesteps"] == 1000
    assert meta["pruning"]["pruning"]["ratio"] == 0.4 and "widths" not in meta["pruning"]
    assert meta["source"]["weights_sha256"] == weights_sha256(diffprune.load(pruned_folder))
    assert meta["batch"] == {"min": 1, "opt": 2, "max": 4}


def test_weights_are_external_by_default_and_inline_on_request(pruned_export, tmp_path):
    meta = pruned_export.model_json
    assert meta["weights_file"] == "model.onnx.data"
    data = pruned_export.out_dir / "model.onnx.data"
    graph = pruned_export.out_dir / "model.onnx"
    assert data.stat().st_size > graph.stat().st_size  # the tensors live beside the graph
    ort_cpu = pruned_export.out_dir / "model.ort.onnx"  # its mid-block attention fused for ort-cpu (test_attention.py)
    assert pruned_export.files == [graph, data, ort_cpu]
    assert pruned_export.megabytes == pytest.approx(sum(f.stat().st_size for f in (graph, data, ort_cpu)) / 1e6)
    inline = to_onnx("arch:tiny", tmp_path / "inline", batch=(1, 1, 2), weights="inline")
    assert inline.model_json["weights_file"] is None
    assert sorted(p.name for p in inline.out_dir.iterdir()) == ["model.json", "model.onnx"]
    with pytest.raises(DiffPruneError, match="weights 'mmap' is unknown; allowed: external, inline"):
        to_onnx("arch:tiny", tmp_path / "x", weights="mmap")


def test_missing_weights_file_is_named(pruned_export, tmp_path):
    import shutil

    from diffprune.runtime.runners import open_runner

    partial = tmp_path / "partial"
    shutil.copytree(pruned_export.out_dir, partial)
    (partial / "model.onnx.data").unlink()
    with pytest.raises(DiffPruneError, match=r"model.onnx.data' is missing; the export folder .* is incomplete"):
        verify_export(partial)
    with pytest.raises(DiffPruneError, match="Copy the whole folder"):
        open_runner(partial, "ort-cpu").open()


def test_onnx_runs_like_torch_at_a_fresh_batch(pruned_export, pruned_folder):
    import onnxruntime as ort

    model = diffprune.load(pruned_folder)
    session = ort.InferenceSession(str(pruned_export.onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    t = np.array([0, 250, 999], dtype=np.float32)
    got = session.run(None, {"sample": x, "timestep": t})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
    assert np.abs(got - ref).max() < 1e-4


def _parse_pbtxt(text):
    """Enough of protobuf text format for Triton configs: nested messages, lists, scalars."""
    tokens = re.findall(r'"[^"]*"|[\[\]{}:,]|[^\s\[\]{}:,]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        try:
            return int(tok)
        except ValueError:
            return tok

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out[key] = value()
        pos += 1
        return out

    return message(None)


def test_triton_repository(pruned_export):
    repo = pruned_export.out_dir.parent / "triton"
    assert (repo / "unet" / "1" / "model.onnx").is_file()
    config = _parse_pbtxt((repo / "unet" / "config.pbtxt").read_text())
    assert config["name"] == "unet" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4
    sample, timestep = config["input"]
    assert sample == {"name": "sample", "data_type": "TYPE_FP32", "dims": [3, 16, 16]}
    assert timestep["dims"] == [1] and timestep["reshape"] == {"shape": []}
    assert config["output"][0]["dims"] == [3, 16, 16]
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    # the ONNX graph's own batch-less dims agree with the config
    graph = onnx.load(str(repo / "unet" / "1" / "model.onnx"))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == sample["dims"]


def test_dense_fp16_export_is_validated(tmp_path):
    result = to_onnx("arch:tiny", tmp_path / "fp16", dtype="fp16", batch=(1, 2, 8))
    v = result.model_json["validation"]
    assert v["passed"] and v["max_rel_error"] <= 1e-2 and all(c["finite"] for c in v["cases"])
    graph = onnx.load(str(result.onnx_path))
    weights = {init.data_type for init in graph.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights
    norms = [n for n in graph.graph.node if n.op_type == "InstanceNormalization"]
    assert norms, "GroupNorm should export as InstanceNormalization"
    kinds = {init.name: init.data_type for init in graph.graph.initializer}
    for node in norms:  # normalisation statistics stay in float32
        for name in node.input[1:]:
            if name in kinds:
                assert kinds[name] == onnx.TensorProto.FLOAT
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O


def test_mismatch_fails_the_export_and_leaves_nothing(tmp_path, monkeypatch):
    # A graph that is wrong (here: the reference model is perturbed) must fail the export.
    import diffprune.export.onnx as export_onnx

    real = export_onnx.validate

    def perturbed(path, model, *args, **kwargs):
        def off(sample, timestep):
            return model(sample, timestep) + 1e-3

        return real(path, off, *args, **kwargs)

    monkeypatch.setattr(export_onnx, "validate", perturbed)
    with pytest.raises(DiffPruneError, match="does not match the torch model"):
        to_onnx("arch:tiny", tmp_path / "bad", batch=(1, 1, 2), exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_onnx_is_refused(pruned_export, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pruned_export.out_dir, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(DiffPruneError, match="truncated or corrupt"):
        verify_export(broken)
    with pytest.raises(DiffPruneError, match="onnx.checker rejects"):
        validate(broken / "model.onnx", lambda s, t: s, "fp32", [1])


def test_model_json_not_matching_its_graph_is_refused(pruned_export, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(pruned_export.out_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["inputs"][0]["shape"] = ["batch", 3, 32, 32]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DiffPruneError, match="does not match its graph"):
        verify_export(other)


def test_out_of_profile_batch_is_refused(pruned_export):
    verify_export(pruned_export.out_dir, batch=4)
    with pytest.raises(DiffPruneError, match="outside the exported range 1..4"):
        verify_export(pruned_export.out_dir, batch=16)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(dtype="int8"), "dtype 'int8'"),
    (dict(opset=9), "opset 9"),
    (dict(batch=(4, 2, 8)), "batch range"),
])
def test_bad_export_options(tmp_path, kwargs, fragment):
    with pytest.raises(DiffPruneError, match=fragment):
        to_onnx("arch:tiny", tmp_path / "x", **kwargs)


def test_cli_export_and_its_errors(tmp_path, capsys):
    from diffprune.cli import main

    assert main(["export", "arch:tiny", str(tmp_path / "e"), "--max-batch", "4", "--exporter", "torchscript"]) == 0
    assert "validated against torch" in capsys.readouterr().out
    assert main(["export", "arch:tiny", str(tmp_path / "e")]) == 2  # exists, no --overwrite
    assert main(["export", "arch:tiny", str(tmp_path / "f"), "--min-batch", "9", "--max-batch", "4"]) == 2
    assert "1 <= min <= opt <= max" in capsys.readouterr().err


def test_build_without_tensorrt_says_so(pruned_export):
    # The real build runs in tests/test_tensorrt.py, where TensorRT and a GPU exist.
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(DiffPruneError, match="tensorrt"):
            build_engine(pruned_export.out_dir, pruned_export.out_dir.parent / "engine")
    else:
        pytest.skip("tensorrt is installed; the real build is tested in test_tensorrt.py")
