"""What an artifact folder is: an ONNX export (model.json), an OpenVINO IR folder (model.json) or a TensorRT
engine (engine.json); whether its files are all there; whether an engine fits this GPU. The files' names,
format strings and readers are runtime/formats.py's."""

from pathlib import Path

from .errors import DiffPruneError
from .formats import (  # noqa: F401 (check_fields, check_spec, read_json: re-exported for older imports)
    ENGINE_JSON, MODEL_JSON, OPENVINO_FORMAT, check_fields, check_spec, read_engine_json, read_json, read_model_json)


def describe(path) -> tuple:
    """``(kind, folder, meta)``: kind "onnx" (model.json), "openvino" (model.json of an IR folder) or
    "tensorrt" (engine.json)."""
    path = Path(path)
    if path.is_file() and path.name in ("model.onnx", "model.plan"):
        path = path.parent
    if not path.exists():
        raise DiffPruneError(f"Artifact {str(path)!r} does not exist. Give an ONNX export folder or a TensorRT engine folder.")
    if (path / ENGINE_JSON).is_file():
        return "tensorrt", path, read_engine_json(path)
    if (path / MODEL_JSON).is_file():
        meta = read_model_json(path)
        # An OpenVINO IR folder (INT8 from `diffprune quantize`) describes itself like an export.
        return ("openvino" if meta.get("format") == OPENVINO_FORMAT else "onnx"), path, meta
    raise DiffPruneError(
        f"{str(path)!r} holds neither {MODEL_JSON} (an ONNX export) nor {ENGINE_JSON} (a TensorRT engine). "
        "Create one with `diffprune export` (then `diffprune build` for TensorRT)."
    )


def check_onnx_files(folder, meta: dict) -> None:
    """The graph, for exports with external weights ``model.onnx.data``, and the ort-cpu graph
    (``model.ort.onnx``) where model.json lists one, must all be there."""
    folder = Path(folder)
    ort_cpu = meta.get("ort_cpu") if isinstance(meta.get("ort_cpu"), dict) else {}
    listed = [n for n in (meta.get("file", "model.onnx"), meta.get("weights_file"), ort_cpu.get("file")) if n]
    for name in listed:
        if not (folder / name).is_file():
            raise DiffPruneError(
                f"{str(folder / name)!r} is missing; the export folder {str(folder)!r} is incomplete "
                f"({MODEL_JSON} lists {' and '.join(listed)}). Copy the whole folder, or re-run `diffprune export`."
            )


def check_engine_compatible(record: dict, tensorrt_version: str, compute_capability: str, gpu_name: str = "") -> None:
    """Refuse an engine built for another GPU or TensorRT version (it would fail or run wrongly)."""
    built_trt = record.get("tensorrt", "?")
    built_cc = record.get("gpu", {}).get("compute_capability", "?")
    built_gpu = record.get("gpu", {}).get("name", "?")
    if built_trt != tensorrt_version and not (
        record.get("version_compatible") and _major(tensorrt_version) >= _major(built_trt)
    ):
        raise DiffPruneError(
            f"This engine was built with TensorRT {built_trt}, but TensorRT {tensorrt_version} is installed. "
            "Engines are tied to the TensorRT version that built them: rebuild it here with `diffprune build` "
            "(or build with --version-compatible)."
        )
    if built_cc != compute_capability:
        hardware_ok = record.get("hardware_compatible") and _cc(compute_capability) >= (8, 0)
        if not hardware_ok:
            raise DiffPruneError(
                f"This engine was built for {built_gpu} (compute capability {built_cc}), but this GPU is "
                f"{gpu_name or '?'} (compute capability {compute_capability}). Rebuild the engine on this GPU with "
                "`diffprune build` (or build with --hardware-compatible for any Ampere+ GPU)."
            )


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def _cc(text: str) -> tuple:
    try:
        major, minor = str(text).split(".")
        return int(major), int(minor)
    except ValueError:
        return (0, 0)
