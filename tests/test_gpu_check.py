"""benchmarks/gpu_check.py runs once on a lent GPU machine; --smoke runs every step of it here first."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_script_runs_end_to_end_in_smoke_mode(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_results.json").read_text())
    assert result["smoke"] is True and result["arch"] == "tiny-attn"
    assert result["prune"]["timesteps"] == 2
    params, macs = result["prune"]["params"], result["prune"]["macs"]
    assert params[1] < params[0] and macs[1] < macs[0]
    kinds = ["unet-eager", "e2e-eager"] + (["e2e-cudagraph"] if result["gpu"] else [])
    assert sorted(result["speedup"]) == sorted(f"b{b}-{k}" for b in (1, 2) for k in kinds)
    assert all(v > 0 for v in result["speedup"].values())
    assert result["finetune"]["steps"] == 2 and result["finetune"]["steps_per_s"] > 0
    for name in ("dense", "pruned"):
        ort = result["onnxruntime_cpu"][name]
        assert ort["validation_max_abs"] <= 1e-4 and ort["e2e_b1_ms"]["median_ms"] > 0
    cond = result["conditional_prune"]
    assert cond["arch"] == "tiny-sd" and cond["timesteps"] == 2 and cond["macs"][1] < cond["macs"][0]
    assert cond["no_gradient_groups"] == 0  # real prompts through the text encoder reach cross-attention
    sd = result["sd_pipeline"]
    assert sd["arch"] == "tiny-sd" and sd["macs"][1] < 0.6 * sd["macs"][0]
    for name in ("dense", "pruned"):
        eager, runtime = sd["eager"][f"{name}-fp32"], sd["runtime"][name]
        for row in (eager, runtime):
            assert row["e2e_ms"] > 0 and set(row["parts_ms"]) == {"text_encoder", "unet", "decoder", "sampler"}
            assert row["parts_ms"]["unet"] > 0 and row["parts_ms"]["decoder"] > 0
    assert sd["runtime"]["backend"] in ("ort-cpu", "ort-cuda") and sd["runtime"]["speedup"] > 0


def test_gpu_script_refuses_a_cpu_machine_without_smoke(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "gpu_results.json").exists()
