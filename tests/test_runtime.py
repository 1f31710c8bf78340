"""The torch-free runtime: import without torch, runners, sampler, PNG output, bad inputs."""

import json
import shutil
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from diffprune import DiffPruneError
from diffprune.runtime import Sampler, make_scheduler, open_runner
from diffprune.runtime.artifact import check_engine_compatible
from diffprune.runtime.image import encode_png, grid


def test_runtime_imports_and_runs_without_torch(tiny_export):
    # Every runtime module imported, and a sample generated, in a process where torch cannot import.
    code = textwrap.dedent(f"""
        import importlib, importlib.util, pkgutil, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name.startswith("diffusers"):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import diffprune.runtime as rt
        for m in pkgutil.walk_packages(rt.__path__, "diffprune.runtime."):
            if m.name.endswith("runners.tensorrt"):
                continue  # imports tensorrt lazily inside open(); importing the module needs nothing
            importlib.import_module(m.name)
        importlib.import_module("diffprune.runtime.runners.tensorrt")
        with rt.open_runner({str(tiny_export)!r}) as runner:
            images = rt.Sampler(runner, rt.make_scheduler("ddim", runner.scheduler_config)).generate(2, steps=3)
        assert images.shape == (2, 16, 16, 1), images.shape
        if importlib.util.find_spec("openvino"):
            with rt.open_runner({str(tiny_export)!r}, "openvino") as runner:
                rt.Sampler(runner, rt.make_scheduler("ddim", runner.scheduler_config)).generate(2, steps=3)
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules), "torch was imported"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_runtime_sources_never_import_torch_or_the_torch_side():
    import ast
    from pathlib import Path

    import diffprune.runtime as rt

    forbidden = ("torch", "diffusers", "torch_pruning", "diffprune.export", "diffprune.sources.loader", "diffprune.pruning.pruner",
                 "diffprune.sources.checkpoint", "diffprune.errors", "diffprune.cli")
    for path in Path(rt.__path__[0]).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:
                    # relative imports must stay inside the runtime package
                    depth = len(path.relative_to(rt.__path__[0]).parts) - 1
                    assert node.level <= depth + 1, f"{path}: relative import leaves the runtime"
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden) and name not in ("diffprune",), f"{path} imports {name}"


def test_runner_matches_the_torch_model(tiny_export, tiny):
    import torch

    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    t = np.array([10.0, 700.0], dtype=np.float32)
    with open_runner(tiny_export) as runner:
        got = runner(x, t)
        assert runner.calls == 1 and runner.seconds > 0
    with torch.no_grad():
        ref = tiny(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_sampler_matches_a_torch_ddim_loop(tiny_export, tiny):
    import torch
    from diffusers import DDIMScheduler

    with open_runner(tiny_export) as runner:
        sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
        ours = sampler.generate(3, seed=7, steps=8, output="float")
        noise = sampler.initial_noise(range(3), seed=7)
    scheduler = DDIMScheduler.from_config(runner.scheduler_config)
    scheduler.set_timesteps(8)
    x = torch.from_numpy(noise)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(tiny(x, t).sample, t, x).prev_sample
    assert np.abs(ours - x.clamp(-1, 1).numpy()).max() < 1e-4


def test_same_seed_same_images_at_any_batch(tiny_export):
    with open_runner(tiny_export) as runner:
        sampler = Sampler(runner, make_scheduler("ddpm", runner.scheduler_config))
        a = sampler.generate(5, seed=3, steps=4, batch=4)
        b = sampler.generate(5, seed=3, steps=4, batch=2)
        c = sampler.generate(5, seed=4, steps=4, batch=4)
        timing = sampler.last_timing
    assert a.dtype == np.uint8 and a.shape == (5, 16, 16, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 <= timing["sampler_share"] < 1 and timing["unet_s"] > 0


def test_nan_output_is_reported_not_written(tiny_export):
    class Broken:
        backend, batch_range, in_channels, sample_size, seconds = "fake", (1, 4), 1, (16, 16), 0.0

        def __call__(self, x, t):
            out = np.zeros_like(x)
            out[0, 0, 0, 0] = np.inf if t[0] < 500 else 0
            return out

    sampler = Sampler(Broken(), make_scheduler("ddim", {"num_train_timesteps": 1000}))
    with pytest.raises(DiffPruneError, match="NaN/Inf at step 2 of 2"):
        sampler.generate(1, steps=2)


def test_runner_checks_inputs(tiny_export):
    with open_runner(tiny_export) as runner:
        with pytest.raises(DiffPruneError, match="shape"):
            runner(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.float32))
        with pytest.raises(DiffPruneError, match="outside this artifact's range 1..4"):
            runner(np.zeros((5, 1, 16, 16), np.float32), np.zeros(5, np.float32))
        with pytest.raises(DiffPruneError, match="float32"):
            runner(np.zeros((1, 1, 16, 16), np.float64), np.zeros(1, np.float32))
        with pytest.raises(DiffPruneError, match="timestep must be"):
            runner(np.zeros((2, 1, 16, 16), np.float32), np.zeros(1, np.float32))


def test_bad_artifacts(tiny_export, broken_exports, tmp_path):
    with pytest.raises(DiffPruneError, match="does not exist"):
        open_runner(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffPruneError, match="neither model.json"):
        open_runner(tmp_path / "empty")
    with pytest.raises(DiffPruneError, match="cannot load"):
        open_runner(broken_exports["corrupt"]).open()
    with pytest.raises(DiffPruneError, match="does not match its graph"):
        open_runner(broken_exports["mismatched"]).open()
    meta = broken_exports["mismatched_meta"]
    with pytest.raises(DiffPruneError, match="Backend 'tpu'"):
        open_runner(tiny_export, "tpu")
    hand_written = tmp_path / "hand-written"
    shutil.copytree(tiny_export, hand_written)
    (hand_written / "model.json").write_text("{}")
    with pytest.raises(DiffPruneError, match=r"not a valid diffprune artifact description: batch \(missing"):
        open_runner(hand_written)
    meta["batch"] = {"min": 4, "max": "8"}
    (hand_written / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DiffPruneError, match=r"batch.max \(got '8'; expected a positive integer\)"):
        open_runner(hand_written)
    with pytest.raises(DiffPruneError, match="needs a TensorRT engine"):
        open_runner(tiny_export, "trt")


def test_tensorrt_provider_options_cache_engines_and_cover_the_batch_range(tiny_export, tmp_path, monkeypatch):
    from diffprune.runtime.runners.onnxruntime import trt_provider_options

    monkeypatch.setenv("DIFFPRUNE_CACHE", str(tmp_path / "cache"))
    meta = json.loads((tiny_export / "model.json").read_text())  # batch 1..4, opt 2, (B, 1, 16, 16)
    options = trt_provider_options(meta)
    assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-trt")
    assert options["trt_profile_min_shapes"] == "sample:1x1x16x16,timestep:1"
    assert options["trt_profile_opt_shapes"] == "sample:2x1x16x16,timestep:2"
    assert options["trt_profile_max_shapes"] == "sample:4x1x16x16,timestep:4"
    assert "trt_profile_min_shapes" not in trt_provider_options(meta, batch=2)  # pinned: static shapes
    dynamic_hw = {**meta, "inputs": [{**meta["inputs"][0], "shape": ["batch", 1, "height", "width"]}, meta["inputs"][1]]}
    assert "trt_profile_min_shapes" not in trt_provider_options(dynamic_hw)  # TensorRT takes shapes as they come


def test_engine_for_another_gpu_or_version_is_refused():
    record = {"tensorrt": "10.13.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}}
    check_engine_compatible(record, "10.13.0", "9.0")
    with pytest.raises(DiffPruneError, match="built for NVIDIA H100.*rebuild|Rebuild"):
        check_engine_compatible(record, "10.13.0", "8.9", "NVIDIA L4")
    with pytest.raises(DiffPruneError, match="TensorRT 10.13.0, but TensorRT 10.14.1"):
        check_engine_compatible(record, "10.14.1", "9.0")
    check_engine_compatible({**record, "hardware_compatible": True}, "10.13.0", "8.9")
    check_engine_compatible({**record, "version_compatible": True}, "10.14.1", "9.0")


def test_png_is_valid_and_grid_has_the_right_size():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    g = grid(images, pad=2)
    assert g.shape == (2 * 10 + 2, 3 * 8 + 2, 3)  # 3 columns (ceil sqrt 5), 2 rows
    png = encode_png(g)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    import io

    back = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(back, g)
    assert zlib.crc32(png[12:29]) == int.from_bytes(png[29:33], "big")  # IHDR CRC
