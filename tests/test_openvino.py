"""The OpenVINO runner: same images as ONNX Runtime, IR cache, pinning, threads, and its bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from diffprune import DiffPruneError
from diffprune.runtime import Sampler, make_scheduler, open_runner
from diffprune.runtime.runners import parse_backend
from diffprune.runtime.sampler import to_uint8

pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def images(export, backend, **kw):
    with open_runner(export, backend, **kw) as runner:
        sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
        return sampler.generate(4, seed=3, steps=8, batch=2, output="float"), runner


def test_same_images_as_onnx_runtime_from_the_same_seeds(tiny_export):
    ort, _ = images(tiny_export, "ort-cpu")
    ov, runner = images(tiny_export, "openvino@f32")
    assert runner.backend == "openvino@f32" and runner.info["precision"] == "f32"
    # Both run the same float32 graph; kernels differ only in summation order.
    assert np.abs(ort - ov).max() < 1e-3
    assert np.array_equal(images(tiny_export, "openvino@f32", batch=2)[0], ov)  # pinning changes nothing
    default, runner = images(tiny_export, "openvino")  # OpenVINO's own choice, and it says what ran
    assert runner.backend == "openvino" and runner.info["precision"] in ("f32", "bf16", "f16")
    assert np.isfinite(default).all()


def test_default_precision_keeps_a_trained_models_images(tmp_path):
    # bf16 (OpenVINO's default on CPUs with bf16 units) on the shipped, trained digits model: the
    # images stay those of float32. (A random-weight model is no test of this: its sampling is
    # chaotic, and bf16 rounding sends it elsewhere.)
    from diffprune.export import to_onnx
    from diffprune.evaluation.metrics import consistency

    export = tmp_path / "digits"
    to_onnx("builtin:digits-ddpm", export, batch=(1, 8, 8), exporter="torchscript")
    f32, _ = images(export, "openvino@f32")
    default, _ = images(export, "openvino")
    assert consistency(to_uint8(default), to_uint8(f32))["ssim"] > 0.98


def test_ir_is_converted_once_and_reused(tiny_export, cache):
    _, first = images(tiny_export, "openvino")
    (ir,) = list(cache.glob("*/model.xml"))
    stamp = ir.stat().st_mtime_ns
    images(tiny_export, "openvino")
    assert [p for p in cache.glob("*/model.xml")] == [ir] and ir.stat().st_mtime_ns == stamp
    assert json.loads((ir.parent / "source.json").read_text())["export"] == str(tiny_export.resolve())


def test_a_changed_export_gets_a_new_ir_and_a_corrupt_ir_is_rebuilt(tiny_export, tmp_path, cache):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    reference, _ = images(export, "openvino")
    (ir,) = list(cache.glob("*/model.xml"))
    ir.write_text("<not an IR")  # a crash or a full disk left this
    again, _ = images(export, "openvino")
    assert np.array_equal(again, reference)
    assert ir.read_text().startswith("<?xml")
    os.utime(export / "model.onnx", ns=(0, 0))  # a re-export (here: only its time) is another model
    images(export, "openvino")
    assert len(list(cache.glob("*/model.xml"))) == 2


def test_pinned_batch_threads_and_precision(tiny_export):
    with open_runner(tiny_export, "openvino", batch=2, threads=1) as runner:
        import openvino.properties as props

        assert runner.compiled.get_property(props.inference_num_threads) == 1
        assert runner.batch_range == (2, 2)
        runner(np.zeros((2, 1, 16, 16), np.float32), np.zeros(2, np.float32))
        with pytest.raises(DiffPruneError, match="outside this artifact's range 2..2"):
            runner(np.zeros((1, 1, 16, 16), np.float32), np.zeros(1, np.float32))
    # bf16 runs where the CPU has bf16 units (AVX512_BF16, AMX); elsewhere (this project's AMD EPYC without AVX-512)
    # OpenVINO runs f32, and the runner records what ran, not what was asked.
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with open_runner(tiny_export, "openvino@bf16") as runner:
        assert runner.backend == "openvino@bf16" and runner.info["precision"] == ("bf16" if has_bf16 else "f32")


def test_backend_specs():
    assert parse_backend("openvino") == ("openvino", None, None)
    assert parse_backend("openvino:GPU@f16") == ("openvino", "GPU", "f16")
    assert parse_backend("ort-cpu") == ("ort-cpu", None, None)
    for bad in ("openvino:", "openvino@int4", "ort-cpu@bf16", "ort-cpu:GPU", "tpu"):
        with pytest.raises(DiffPruneError, match="openvino\\[:DEVICE\\]\\[@PRECISION\\]"):
            parse_backend(bad)


def test_bad_device_corrupt_export_and_mismatched_spec(tiny_export, broken_exports, tmp_path):
    with pytest.raises(DiffPruneError, match="device 'NPU7' is not available here; available: .*CPU"):
        open_runner(tiny_export, "openvino:NPU7").open()
    with pytest.raises(DiffPruneError, match="OpenVINO cannot read"):
        open_runner(broken_exports["corrupt"], "openvino").open()
    with pytest.raises(DiffPruneError, match="does not match its graph"):
        open_runner(broken_exports["mismatched"], "openvino").open()
    meta = broken_exports["mismatched_meta"]
    with pytest.raises(DiffPruneError, match="runs ONNX exports"):
        engine = tmp_path / "engine"
        engine.mkdir()
        (engine / "engine.json").write_text(json.dumps({"model": meta, "profile": {"batch": meta["batch"]}}))
        open_runner(engine, "openvino")


def test_missing_openvino_package_is_a_clear_error(tiny_export):
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "from diffprune.runtime import open_runner\n"
        f"open_runner({str(tiny_export)!r}, 'openvino').open()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "pip install 'diffprune[openvino]'" in proc.stderr


def test_unwritable_cache_falls_back_to_the_onnx_file(tiny_export, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DIFFPRUNE_CACHE", str(blocker / "sub"))  # a path under a file cannot be created
    ov, runner = images(tiny_export, "openvino")
    assert runner.info["ir_cache"] is None and np.isfinite(ov).all()


def test_int8_that_does_not_hold_writes_nothing_and_one_that_does_runs_on_openvino_only(tiny_export, tmp_path):
    pytest.importorskip("nncf")
    from diffprune.export.openvino_int8 import quantize_int8

    out = tmp_path / "int8"
    # A random-weight model's sampling is chaotic: INT8 rounding sends it elsewhere (and a model this
    # small is not faster in INT8), so the default bar refuses it and leaves nothing behind.
    with pytest.raises(DiffPruneError, match="does not hold: SSIM .* Nothing was written"):
        quantize_int8(tiny_export, out, n=2, steps=4, subset_size=8, min_ssim=0.999, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".int8*"))
    record = quantize_int8(tiny_export, out, n=2, steps=4, subset_size=8, min_ssim=0, min_speedup=0, log=lambda m: None)
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "diffprune.openvino/1" and meta["dtype"] == "int8" and meta["batch"]["max"] == 1
    assert meta["quantization"]["calibration"]["inputs"] == 8 and record["validation"]["images"] == 2
    assert 0 <= meta["quantization"]["validation"]["ssim_vs_fp32"] <= 1
    with open_runner(out, "openvino") as runner:
        assert runner.info["ir_cache"] is None  # an IR folder is read as it is
        Sampler(runner, make_scheduler("ddim", runner.scheduler_config)).generate(1, steps=2)
    with pytest.raises(DiffPruneError, match="only OpenVINO runs"):
        open_runner(out, "ort-cpu")
    with pytest.raises(DiffPruneError, match="already exists"):
        quantize_int8(tiny_export, out, n=1, steps=1, log=lambda m: None)
