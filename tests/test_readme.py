"""The README's quickstart, run as written: its Python blocks execute, its commands match CI's, and
the demo it promises produces its picture."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def section(title):
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_quickstart_commands_are_what_ci_runs():
    quick = re.findall(r"```bash\n(.*?)```", section("Quickstart"), flags=re.S)[0].strip().splitlines()
    assert len(quick) == 2, "the quickstart is two commands"
    setup, test = quick
    assert 'pip install -e ".[torch,cpu,openvino,int8,dev,serve]"' in setup and setup.endswith("diffprune demo")
    # CPU first, as a command: PyTorch's CPU build before the install that would otherwise pull CUDA's
    cpu = setup.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < setup.index('pip install -e ".[torch,cpu,openvino,int8,dev,serve]"')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[torch,cpu,openvino,int8,dev,serve]"' in ci
    assert test in ci, "CI must run the README's test command"


@pytest.mark.full_demo
def test_quickstart_demo_runs_as_written(tmp_path):
    setup = re.findall(r"```bash\n(.*?)```", section("Quickstart"), flags=re.S)[0].strip().splitlines()[0]
    demo = setup.split("&&")[-1].strip()
    argv = shlex.split(demo)
    assert argv[:2] == ["diffprune", "demo"]
    # No timeout: a slow or loaded machine is no failure (the suite runs a reduced demo in test_demo.py).
    proc = subprocess.run([sys.executable, "-m", "diffprune", *argv[1:], "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "diffprune-demo"
    assert (out / "grid.png").is_file() and (out / "report.json").is_file()
    assert "pruned + fine-tuned" in proc.stdout


def test_python_api_block_runs(tmp_path, monkeypatch):
    code = blocks("python")[0]
    assert "diffprune.prune" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "tiny-pruned" / "pruning.json").is_file()
