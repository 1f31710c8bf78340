"""runtime/formats.py: one reader per artifact file, each with a clear error naming the file; the
formats' names used by their writers; the backend rules and deploy defaults in one place."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffprune import DiffPruneError
from diffprune.runtime import formats as F

SAMPLE_SPEC = {"batch": {"min": 1, "opt": 2, "max": 4}, "in_channels": 3, "sample_size": [8, 8],
               "inputs": [{"name": "sample", "shape": ["batch", 3, 8, 8]}, {"name": "timestep", "shape": ["batch"]}]}


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _model(folder: Path, **change) -> Path:
    _write(folder / F.MODEL_JSON, {"format": F.ONNX_FORMAT, **SAMPLE_SPEC, **change})
    return folder


def _engine(folder: Path, **change) -> Path:
    _write(folder / F.ENGINE_JSON, {"format": F.TENSORRT_FORMAT, "model": {"format": F.ONNX_FORMAT, **SAMPLE_SPEC},
                                    "profile": {"batch": {"min": 1, "opt": 2, "max": 4}}, **change})
    return folder


def _pipeline(folder: Path, **change) -> Path:
    _model(folder / "unet")
    _write(folder / F.PIPELINE_JSON, {"format": F.PIPELINE_FORMAT, "kind": "pixel", "components": {"unet": "unet"},
                                      "scheduler": {"_class_name": "DDIMScheduler"}, **change})
    return folder


def _deploy(folder: Path, **change) -> Path:
    _model(folder / "art")
    _write(folder / F.DEPLOY_JSON, {"format": F.DEPLOY_FORMAT, "artifact": "art", "backend": "ort-cpu",
                                    "scheduler": "ddim", "steps": 10, "batch": 2, "guidance": None, **change})
    return folder


def _pruning(folder: Path, **change) -> Path:
    _write(folder / F.PRUNING_JSON, {"format": F.PRUNED_UNET_FORMAT, "widths": {"conv_in": {"out_channels": 8}},
                                     "pruning": {"ratio": 0.5}, **change})
    return folder


# (reader, write a good folder, the file it reads, a wrong format string, a fragment of that error)
READERS = {
    "model.json": (F.read_model_json, _model, F.MODEL_JSON, "diffprune.onnx/9", "has format 'diffprune.onnx/9'"),
    "engine.json": (F.read_engine_json, _engine, F.ENGINE_JSON, "diffprune.onnx/1", "has format 'diffprune.onnx/1'"),
    "pipeline.json": (F.read_pipeline_json, _pipeline, F.PIPELINE_JSON, "diffprune.pipeline/9",
                      "this runtime reads 'diffprune.pipeline/1'"),
    "deploy.json": (F.read_deploy_json, _deploy, F.DEPLOY_JSON, "other", "not a deployment configuration"),
    "pruning.json": (F.read_pruning_json, _pruning, F.PRUNING_JSON, "diffprune.onnx/1",
                     "has format 'diffprune.onnx/1'"),
}


def _error(fn, *args) -> str:
    with pytest.raises(DiffPruneError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("name", READERS)
def test_each_reader_reads_a_good_file_from_the_folder_or_the_file(tmp_path, name):
    read, make, file, _, _ = READERS[name]
    folder = make(tmp_path / "a")
    got = read(folder)
    assert got == read(folder / file)
    assert got["format"] == json.loads((folder / file).read_text())["format"]
    if name == "deploy.json":
        assert got["artifact"] == str((folder / "art").resolve()) and got["file"] == str(folder / file)
        assert got["steps"] == 10


@pytest.mark.parametrize("name", READERS)
def test_each_reader_names_the_file_when_it_is_corrupt(tmp_path, name):
    read, make, file, _, _ = READERS[name]
    folder = make(tmp_path / "a")
    (folder / file).write_text('{"format": "cut sh')
    message = _error(read, folder)
    assert f"{str(folder / file)!r} is not valid JSON" in message
    assert "re-" in message  # what to do: re-run / re-create


@pytest.mark.parametrize("name", READERS)
def test_each_reader_refuses_another_format_string(tmp_path, name):
    read, make, file, wrong, fragment = READERS[name]
    folder = make(tmp_path / "a", format=wrong)
    message = _error(read, folder)
    assert str(folder / file) in message and fragment in message


@pytest.mark.parametrize("name", READERS)
def test_each_reader_names_the_missing_file(tmp_path, name):
    read = READERS[name][0]
    (tmp_path / "empty").mkdir()
    message = _error(read, tmp_path / "empty")
    assert str(tmp_path / "empty") in message and name in message


def test_files_without_a_format_string_are_read_as_before(tmp_path):
    # model.json / engine.json / pruning.json written by hand (tests, older tools) carry no format string
    folder = tmp_path / "hand"
    _write(folder / F.MODEL_JSON, SAMPLE_SPEC)
    assert F.read_model_json(folder)["batch"]["max"] == 4
    _write(folder / F.ENGINE_JSON, {"model": SAMPLE_SPEC, "profile": {"batch": {"min": 1, "max": 2}}})
    assert F.read_engine_json(folder)["profile"]["batch"]["max"] == 2
    _write(folder / F.PRUNING_JSON, {"widths": {}})
    assert F.read_pruning_json(folder) == {"widths": {}}
    # but pipeline.json and deploy.json always said their format, and must
    _pipeline(tmp_path / "p")
    spec = json.loads((tmp_path / "p" / F.PIPELINE_JSON).read_text())
    spec.pop("format")
    _write(tmp_path / "p" / F.PIPELINE_JSON, spec)
    assert "has format None" in _error(F.read_pipeline_json, tmp_path / "p")


def test_the_checks_behind_each_reader(tmp_path):
    folder = _model(tmp_path / "m", batch={"min": 4, "max": 2})
    assert "batch.min 4 is above batch.max 2" in _error(F.read_model_json, folder)
    folder = _model(tmp_path / "m2", sample_size=[8])
    assert "sample_size (got [8]" in _error(F.read_model_json, folder)
    folder = _engine(tmp_path / "e", profile={"batch": {"min": 1}})
    assert "profile.batch.max (missing" in _error(F.read_engine_json, folder)
    folder = _pipeline(tmp_path / "p", kind="video")
    assert "of kind 'video'" in _error(F.read_pipeline_json, folder)
    folder = _pipeline(tmp_path / "p2", components={"unet": "nowhere"})
    assert "The unet component" in _error(F.read_pipeline_json, folder)
    folder = _deploy(tmp_path / "d", steps=0)
    assert "steps is 0" in _error(F.read_deploy_json, folder)
    folder = _pruning(tmp_path / "w", widths=None)
    assert "has no 'widths' table" in _error(F.read_pruning_json, folder)
    assert F.is_pipeline(tmp_path / "p") and not F.is_pipeline(tmp_path / "m")


def test_the_shipped_models_pruning_json_reads():
    assets = Path(__file__).resolve().parents[1] / "diffprune" / "assets"
    for folder in (assets / "digits-ddpm", assets / "digits-text" / "unet"):
        info = F.read_pruning_json(folder)
        assert info["format"] == F.PRUNED_UNET_FORMAT and info["widths"]


def test_scheduler_maps_name_the_runtime_schedulers():
    from diffprune.runtime.schedulers import SCHEDULERS

    assert set(F.SCHEDULER_CLASSES.values()) | set(F.SCHEDULER_VARIANTS) == set(SCHEDULERS)
    assert all(F.SCHEDULER_CLASSES[cls] == name for name, cls in F.DIFFUSERS_SCHEDULERS.items())
    assert F.scheduler_name({"_class_name": "EulerDiscreteScheduler"}) == "euler"
    assert "PNDMScheduler, which the runtime" in _error(F.scheduler_name, {"_class_name": "PNDMScheduler"})
    from diffprune.selection.decide import DETERMINISTIC

    assert DETERMINISTIC == {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm-solver++"}


@pytest.mark.parametrize("kind, backend, runs", [
    ("onnx", "ort-cpu", True), ("onnx", "ort-trt", True), ("onnx", "openvino:GPU@f16", True), ("onnx", "trt", False),
    ("openvino", "openvino", True), ("openvino", "openvino@f32", True), ("openvino", "ort-cpu", False),
    ("openvino", "trt", False), ("tensorrt", "trt", True), ("tensorrt", "ort-cuda", False),
    ("tensorrt", "openvino", False),
])
def test_one_rule_says_which_backend_runs_which_artifact(tmp_path, kind, backend, runs):
    from diffprune.runtime.runners import incompatibility, open_runner

    why = incompatibility(kind, backend, tmp_path)
    assert (why is None) == runs
    if kind == "tensorrt" and not runs:  # open_runner refuses with the same words, before any backend loads
        folder = _engine(tmp_path / "e")
        assert _error(open_runner, folder, backend) == incompatibility(kind, backend, folder)
    if kind == "onnx" and not runs:
        folder = _model(tmp_path / "m")
        assert _error(open_runner, folder, backend) == incompatibility(kind, backend, folder)


def test_deploy_defaults_are_merged_once(tmp_path):
    from diffprune.runtime.deploy import SETTINGS, apply_deploy

    a = _deploy(tmp_path / "a")
    b = _deploy(tmp_path / "b", steps=20)
    plain = _model(tmp_path / "plain")
    none = dict.fromkeys(SETTINGS)
    artifacts, settings, deploys = apply_deploy([str(a), str(plain)], none)
    assert artifacts == [str((a / "art").resolve()), str(plain)]
    assert settings == {"backend": "ort-cpu", "scheduler": "ddim", "steps": 10, "batch": 2}
    assert deploys[0]["file"] == str(a / F.DEPLOY_JSON) and deploys[1] is None
    # the command line wins; a setting nobody gives stays None (the command's own default applies)
    _, settings, _ = apply_deploy([str(a)], {**none, "steps": 3})
    assert settings["steps"] == 3
    assert apply_deploy([str(plain)], none)[1] == none
    # deploy files that disagree must be settled on the command line
    assert "disagree on steps (10, 20)" in _error(apply_deploy, [str(a), str(b)], none)
    assert apply_deploy([str(a), str(b)], {**none, "steps": 5})[1]["steps"] == 5


def test_formats_imports_without_torch_or_the_torch_side():
    code = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "diffusers", "onnx", "diffprune.export")):
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        from diffprune.runtime import formats
        assert formats.PIPELINE_FORMAT == "diffprune.pipeline/1"
        assert not any(k == "torch" or k.startswith(("torch.", "diffprune.export")) for k in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_export_onnx_and_validate_do_not_import_each_other():
    export = Path(__file__).resolve().parents[1] / "export"
    assert ".validate" in _imports(export / "onnx.py") and ".onnx" not in _imports(export / "validate.py")
    assert {".graph_io"} <= _imports(export / "validate.py") & _imports(export / "onnx.py")
