"""`diffprune bench`: one process per model, runs alternating, memory per process, the report."""

import io
import json
import sys

import numpy as np
import pytest

import diffprune
from diffprune import DiffPruneError
from diffprune.evaluation.benchmark import markdown, run_bench, write_report
from diffprune.runtime.bench import WORKER_ENV, Case, WorkerCase, measure, serve


@pytest.fixture(scope="module")
def pruned_export(tmp_path_factory):
    from diffprune.export import to_onnx
    from diffprune.sources.unet import build_unet

    model, _ = diffprune.prune(build_unet("tiny"), method="magnitude", ratio=0.5, progress=False)
    out = tmp_path_factory.mktemp("bench") / "pruned-onnx"
    to_onnx(model, out, batch=(1, 2, 4), exporter="torchscript")
    return out


def test_bench_times_each_model_in_its_own_process(tiny_export, pruned_export, tmp_path):
    results = run_bench([tiny_export, pruned_export], batches=[1, 2], steps=2, runs=2, threads=1,
                        torch_baseline="arch:tiny", progress=False)
    assert set(results["batches"]) == {1, 2}
    for batch, rows in results["batches"].items():
        assert list(rows) == [tiny_export.name, pruned_export.name, "dense (diffusers, PyTorch eager)"]
        for row in rows.values():
            assert row["runs"] == 2 and row["batch"] == batch
            assert 0 < row["unet_ms"]["median"] <= row["e2e_ms"]["median"]
            assert row["e2e_ms"]["min"] <= row["e2e_ms"]["median"] <= row["e2e_ms"]["p90"]
            assert row["peak_rss_mib"] > 0
        assert rows[tiny_export.name]["speedup_vs_first"] == 1.0 == rows[tiny_export.name]["speedup_paired"]
        first, pruned = rows[tiny_export.name]["e2e_ms_runs"], rows[pruned_export.name]["e2e_ms_runs"]
        ratios = sorted(a / b for a, b in zip(first, pruned))
        assert rows[pruned_export.name]["speedup_paired"] == pytest.approx((ratios[0] + ratios[1]) / 2)
        assert rows["dense (diffusers, PyTorch eager)"]["backend"] == "torch-eager-cpu"
        memory = results["memory_by_batch"][batch]
        for name, m in memory.items():
            # the process's peak covers the model; "before" is numpy + backend imported
            assert m["peak_mib"] > m["baseline_mib"] > 10 and m["model_mib"] > 0
        # torch and diffusers are imported before the baseline is read, onnxruntime alike
        assert memory["dense (diffusers, PyTorch eager)"]["baseline_mib"] > memory[tiny_export.name]["baseline_mib"]
    assert results["memory"] == results["memory_by_batch"][1]
    assert results["worker_env"] == WORKER_ENV
    text = markdown(results, "diffprune bench ...")
    assert "each model in its own process" in text and "MALLOC_MMAP_THRESHOLD_=131072" in text
    assert text.count("| 2 | ") == 6  # three timing rows and three memory rows at batch 2
    out = write_report(results, tmp_path / "report")
    saved = json.loads((out / "bench.json").read_text())
    assert saved["command"] == "" and set(saved["batches"]) == {"1", "2"}
    assert (out / "bench.md").read_text() == markdown(results, "")


def test_bench_rejects_bad_artifacts_before_starting(tmp_path, tiny_export):
    with pytest.raises(DiffPruneError, match="does not exist"):
        run_bench([tmp_path / "nope"], progress=False)
    with pytest.raises(DiffPruneError, match="at least one artifact"):
        run_bench([], progress=False)


def test_a_worker_that_dies_is_reported_with_its_message():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('no such model\\n'); sys.exit(3)"]
    with pytest.raises(DiffPruneError, match=r"for 'x' stopped: no such model \(exit status 3\)"):
        WorkerCase("x", argv)


def test_worker_for_a_missing_weights_file_fails_clearly(tiny_export, tmp_path):
    import shutil

    from diffprune.runtime.bench import worker_case

    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    (broken / "model.onnx.data").unlink()
    with pytest.raises(DiffPruneError, match="model.onnx.data' is missing"):
        worker_case("broken", broken, "ort-cpu", "ddim", 2, 1)


def test_serve_protocol():
    calls = []

    def make_case():
        return Case("m", lambda: calls.append(1) or (0.5, 0.25), {"backend": "fake"})

    out = io.StringIO()
    serve(make_case, stdin=io.StringIO("run\nrun\n"), stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["ready"] and lines[0]["info"] == {"backend": "fake"} and lines[0]["baseline_mib"] > 0
    assert lines[1:3] == [{"e2e_s": 0.5, "unet_s": 0.25}] * 2 and len(calls) == 2
    assert lines[3]["peak_mib"] >= lines[0]["baseline_mib"]


def test_measure_interleaves_and_summarises():
    order = []
    cases = [Case(name, lambda name=name: order.append(name) or (0.2, 0.1)) for name in "ab"]
    result = measure(cases, batch=4, runs=3, warmup=1)
    assert order == list("ab" * 4)  # warm-up round, then A B A B A B
    assert result["a"]["images_per_s"] == pytest.approx(20.0)
    assert result["a"]["sampler_share"] == pytest.approx(0.5)
    assert result["b"]["e2e_ms_runs"] == [200.0] * 3  # every timed run kept, in order
    with pytest.raises(DiffPruneError, match="runs 0 must be at least 1"):
        measure(cases, batch=1, runs=0)


def test_pinned_batch_runner(tiny_export):
    from diffprune.runtime.runners import open_runner

    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    with open_runner(tiny_export, batch=2) as pinned, open_runner(tiny_export) as free:
        t = np.array([10.0, 500.0], np.float32)
        np.testing.assert_allclose(pinned(x, t), free(x, t), atol=1e-5)
        with pytest.raises(DiffPruneError, match="Batch 1 is outside"):
            pinned(x[:1], t[:1])
    with pytest.raises(DiffPruneError, match="Batch 9 is outside this artifact's range 1..4"):
        open_runner(tiny_export, batch=9)


def test_cpu_runner_session_options(tiny_export):
    """Memory pattern off (one set of activations in the arena), arena kept, one inter-op thread."""
    from diffprune.runtime.runners import open_runner

    with open_runner(tiny_export, threads=1) as runner:
        options = runner.session.get_session_options()
        assert options.enable_mem_pattern is False
        assert options.enable_cpu_mem_arena is True
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_bench_over_two_backends_gives_every_speedup_and_the_same_threads_to_all(tiny_export, pruned_export):
    pytest.importorskip("openvino")
    results = run_bench([tiny_export, pruned_export], backend=["ort-cpu", "openvino@f32"], batches=[1], steps=2,
                        runs=2, threads=1, torch_baseline="arch:tiny", progress=False)
    rows = results["batches"][1]
    names = [f"{tiny_export.name} on ort-cpu", f"{pruned_export.name} on ort-cpu",
             f"{tiny_export.name} on openvino@f32", f"{pruned_export.name} on openvino@f32",
             "dense (diffusers, PyTorch eager)"]
    assert list(rows) == names and results["backends"] == ["ort-cpu", "openvino@f32"]
    assert all(row["threads"] == 1 for row in rows.values())  # the eager baseline's too
    assert rows[names[2]]["precision"] == "f32" and rows[names[2]]["backend"] == "openvino@f32"
    assert rows[names[2]]["speedup_vs_dense_same_backend"] == 1.0
    ov_dense, ov_pruned = rows[names[2]]["e2e_ms"]["median"], rows[names[3]]["e2e_ms"]["median"]
    assert rows[names[3]]["speedup_vs_dense_same_backend"] == pytest.approx(ov_dense / ov_pruned)
    assert rows[names[3]]["speedup_vs_first"] == pytest.approx(rows[names[0]]["e2e_ms"]["median"] / ov_pruned)
    eager = rows[names[4]]["e2e_ms"]["median"]
    assert rows[names[3]]["speedup_vs_eager"] == pytest.approx(eager / ov_pruned)
    text = markdown(results)
    assert "vs dense, same backend" in text and "openvino@f32 (f32)" in text


def test_threads_default_to_the_cpus_this_process_may_use(tiny_export):
    from diffprune.evaluation.benchmark import default_threads

    results = run_bench([tiny_export], batches=[1], steps=1, runs=1, torch_baseline="none", progress=False,
                        memory=False)
    assert results["threads"] == default_threads() >= 1
    assert results["batches"][1][tiny_export.name]["threads"] == default_threads()


def test_bench_without_torch_skips_the_baseline_it_would_pick_and_refuses_one_asked_for(tiny_export, monkeypatch):
    import diffprune.evaluation.benchmark as benchmark

    monkeypatch.setattr(benchmark, "_torch_missing", lambda: True)
    with pytest.raises(DiffPruneError, match="needs torch and diffusers.*--torch-baseline none"):
        run_bench([tiny_export], batches=[1], steps=1, runs=1, torch_baseline="arch:tiny", progress=False)
    results = run_bench([tiny_export], batches=[1], steps=1, runs=1, torch_baseline="auto", progress=False)
    assert results["torch_baseline"] is None and "torch is not installed" in results["torch_baseline_note"]
    assert "PyTorch eager baseline: none" in markdown(results)


def test_bad_backend_lists_are_refused_before_anything_runs(tiny_export):
    for backend in (["ort-cpu", "tpu"], [], "ort-cpu@bf16"):
        with pytest.raises(DiffPruneError, match="(?i)backend"):
            run_bench([tiny_export], backend=backend, batches=[1], steps=1, runs=1, progress=False)


def test_bench_without_matplotlib_says_the_plot_was_skipped(tiny_export, tmp_path, monkeypatch, capsys):
    from diffprune.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_export), "--steps", "1", "--runs", "1", "--warmup", "0", "--torch-baseline", "none",
                 "--no-memory", "--quiet", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]
    assert last.startswith(f"wrote {out}/bench.json, bench.md (bench.png was not written: matplotlib is not installed")
    assert "bench.png," not in last and "diffprune[dev]" in last
    assert "matplotlib is not installed" in json.loads((out / "bench.json").read_text())["plot"]
