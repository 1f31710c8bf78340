"""TensorRT engine builds. Run only where the tensorrt package and a CUDA GPU exist; skipped elsewhere
(this project's CI and development machines have neither)."""

import json

import numpy as np
import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed")
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def _run_engine(plan: bytes, sample: np.ndarray, timestep: np.ndarray) -> np.ndarray:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    x = torch.from_numpy(sample).cuda()
    t = torch.from_numpy(timestep).cuda()
    out = torch.empty_like(x)
    context.set_input_shape("sample", tuple(x.shape))
    context.set_input_shape("timestep", tuple(t.shape))
    for name, tensor in (("sample", x), ("timestep", t), ("out_sample", out)):
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out.cpu().numpy()


@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_onnx_runtime(tmp_path, dtype, tol):
    import onnxruntime as ort

    from diffprune.export import build_engine, to_onnx

    export = to_onnx("arch:tiny-attn", tmp_path / "onnx", dtype=dtype, batch=(1, 2, 4))
    engine_dir = build_engine(export.out_dir, tmp_path / "engine", workspace_gb=1)
    record = json.loads((engine_dir / "engine.json").read_text())
    assert record["tensorrt"] == trt.__version__ and record["profile"]["batch"]["max"] == 4
    assert record["gpu"]["compute_capability"] == "%d.%d" % torch.cuda.get_device_capability(0)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    t = np.array([0, 400, 999], dtype=np.float32)
    got = _run_engine((engine_dir / "model.plan").read_bytes(), x, t)
    ref = ort.InferenceSession(str(export.onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"sample": x, "timestep": t})[0]
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() / np.abs(ref).max() < tol


def test_profile_outside_export_range_is_refused(tmp_path):
    from diffprune import DiffPruneError
    from diffprune.export import build_engine, to_onnx

    export = to_onnx("arch:tiny", tmp_path / "onnx", batch=(1, 2, 4))
    with pytest.raises(DiffPruneError, match="outside the exported range"):
        build_engine(export.out_dir, tmp_path / "engine", batch=(1, 2, 16))


def test_pipeline_engines_match_onnx_runtime(tmp_path):
    """One engine per component of a tiny SD pipeline; the UNet engine at the doubled guidance batch."""
    import onnxruntime as ort

    from diffprune.export import build_pipeline, export_pipeline

    export_pipeline("arch:tiny-sd", tmp_path / "onnx", batch=(1, 1, 2), progress=None)
    out = build_pipeline(tmp_path / "onnx", tmp_path / "engines", workspace_gb=1)
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record["engines"]) == {"text_encoder", "unet", "vae_decoder"}
    assert (out / "tokenizer" / "vocab.json").is_file()
    unet = json.loads((out / "unet" / "engine.json").read_text())
    assert unet["profile"]["shapes"]["encoder_hidden_states"] == [[1, 77, 24], [2, 77, 24], [4, 77, 24]]
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((out / "unet" / "model.plan").read_bytes())
    context = engine.create_execution_context()
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((4, 4, 16, 16)).astype(np.float32),
             "timestep": np.array([0, 300, 600, 999], dtype=np.float32),
             "encoder_hidden_states": rng.standard_normal((4, 77, 24)).astype(np.float32)}
    tensors = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    result = torch.empty((4, 4, 16, 16), device="cuda")
    for name, tensor in tensors.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("out_sample", result.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    ref = ort.InferenceSession(str(tmp_path / "onnx" / "unet" / "model.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(result.cpu().numpy() - ref).max() / np.abs(ref).max() < 1e-3
