"""What is installed is what is tested: the wheel holds every package, and the torch-free install
samples and benchmarks outside the source tree."""

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the import path it is installed under (pyproject.toml's package-dir).
FOLDERS = {"diffprune": "diffprune", "export": "diffprune/export", "runtime": "diffprune/runtime"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # From a clean copy: setuptools reuses a build/ folder left in the checkout, whose stale files
    # would hide a package missing from pyproject.toml.
    source = tmp_path_factory.mktemp("source") / "diffprune"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                                 "__pycache__", "benchmarks", "tests"))
    # No build isolation: the build uses this environment's setuptools and needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    (path,) = out.glob("diffprune-*.whl")
    return path


def expected_files() -> set:
    names = set()
    for folder, target in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                names.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return names


def test_wheel_holds_every_module_and_asset(wheel):
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_files() - inside)
    assert not missing, f"missing from the wheel: {missing}"
    for required in ("diffprune/runtime/runners/openvino.py", "diffprune/runtime/schedulers/ddim.py",
                     "diffprune/cli/__init__.py", "diffprune/assets/digits-ddpm/config.json"):
        assert required in inside


def test_base_install_does_not_pull_torch(wheel):
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    heavy = ("torch", "diffusers", "accelerate", "torch-pruning", "onnxscript")
    assert base and not any(r.split(">")[0].split("<")[0].split("=")[0].strip() in heavy for r in base), base
    for extra in ("torch", "cpu", "openvino", "gpu", "serve"):
        assert any(f'extra == "{extra}"' in r for r in requires), extra
    serve = [r for r in requires if 'extra == "serve"' in r]  # an inference host's server: no torch either
    assert not any(r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() in heavy for r in serve), serve


def test_every_inference_extra_can_tokenize_prompts(wheel):
    # `pip install "diffprune[openvino]"`, the README's inference host, could not sample a text pipeline
    # ("needs the 'tokenizers' package"): each inference extra brings it.
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for extra in ("cpu", "openvino", "gpu", "text"):
        assert any(r.startswith("tokenizers") and f'extra == "{extra}"' in r for r in requires), (extra, requires)


def test_install_sizes_measures_the_readme_installs():
    # benchmarks/install_sizes.py installs what the README's table says, with the extras pyproject.toml defines.
    import importlib.util
    import tomllib

    spec = importlib.util.spec_from_file_location("install_sizes", ROOT / "benchmarks" / "install_sizes.py")
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    for _, command in sizes.INSTALLS.values():
        asked = command.split('"diffprune[')[1].split(']"')[0].split(",")
        assert set(asked) <= set(extras), command
        assert f'`pip install "diffprune[{",".join(asked)}]"`' in readme, command
    assert any("tokenizers" in r for r in extras["openvino"]) and any("tokenizers" in r for r in extras["cpu"])


@pytest.mark.slow
def test_torch_free_install_samples_and_benches_outside_the_source_tree(wheel, tiny_export, tmp_path):
    # As an inference host installs it: the wheel with one backend, in a fresh virtualenv, no torch.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[openvino]"], check=True, cwd=tmp_path)
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, json; print(json.dumps("
                            "{m: u.find_spec(m) is not None for m in ('torch', 'diffusers', 'onnxruntime', 'openvino')}))"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(probe.stdout) == {"torch": False, "diffusers": False, "onnxruntime": False, "openvino": True}
    cli = str(env_dir / "bin" / "diffprune")
    env = {"PATH": str(env_dir / "bin"), "DIFFPRUNE_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    run = lambda *argv: subprocess.run([cli, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)  # noqa: E731
    proc = run("sample", str(tiny_export), "--backend", "openvino", "--n", "4", "--steps", "3", "--out", "grid.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run("bench", str(tiny_export), "--backend", "openvino", "--steps", "2", "--runs", "2", "--out", "bench", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["torch_baseline"] is None and "torch is not installed" in report["torch_baseline_note"]
    assert "torch" not in report["versions"] and report["versions"]["openvino"]
    # The toolchain's commands say what to install instead of failing on an import.
    proc = run("prune", "arch:tiny", "pruned", "--method", "magnitude")
    assert proc.returncode == 2 and "diffprune[torch]" in proc.stderr and "Traceback" not in proc.stderr
