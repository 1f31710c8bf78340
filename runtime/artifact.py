"""Reading what export wrote: model.json (ONNX) and engine.json (TensorRT), with checks."""

import json
from pathlib import Path

from .errors import DiffPruneError

OPENVINO_FORMAT = "diffprune.openvino/1"  # what export/openvino_int8.py writes


def read_json(path: Path, remedy: str = "re-create the artifact") -> dict:
    """A JSON file diffprune wrote; a clear error, ending with ``remedy``, when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffPruneError(f"{str(path)!r} is missing; give a folder written by `diffprune export` or `diffprune build`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffPruneError(f"{str(path)!r} is not valid JSON ({e}); {remedy}.") from None


def describe(path) -> tuple:
    """``(kind, folder, meta)``: kind "onnx" (model.json), "openvino" (model.json of an IR folder) or
    "tensorrt" (engine.json)."""
    path = Path(path)
    if path.is_file() and path.name in ("model.onnx", "model.plan"):
        path = path.parent
    if not path.exists():
        raise DiffPruneError(f"Artifact {str(path)!r} does not exist. Give an ONNX export folder or a TensorRT engine folder.")
    if (path / "engine.json").is_file():
        meta = read_json(path / "engine.json")
        check_spec(meta.get("model") if isinstance(meta, dict) else None, path / "engine.json", "model.")
        check_fields(meta.get("profile", {}).get("batch") if isinstance(meta.get("profile"), dict) else None,
                     BATCH_FIELDS, path / "engine.json", "profile.batch.")
        return "tensorrt", path, meta
    if (path / "model.json").is_file():
        meta = read_json(path / "model.json")
        check_spec(meta, path / "model.json")
        # An OpenVINO IR folder (INT8 from `diffprune quantize`) describes itself like an export.
        return ("openvino" if meta.get("format") == OPENVINO_FORMAT else "onnx"), path, meta
    raise DiffPruneError(
        f"{str(path)!r} holds neither model.json (an ONNX export) nor engine.json (a TensorRT engine). "
        "Create one with `diffprune export` (then `diffprune build` for TensorRT)."
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_dim(v) -> bool:
    return (_is_int(v) and v > 0) or (isinstance(v, str) and bool(v))


# What the runtime reads from model.json (engine.json keeps the same under "model"): field -> (check, what it is).
SPEC_FIELDS = {
    "batch": (lambda v: isinstance(v, dict), "an object {min, opt, max}"),
    "in_channels": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "sample_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(d) and d > 0 for d in v),
                    "[height, width], positive integers"),
    "inputs": (lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("shape"), list)
        and all(_is_dim(d) for d in i["shape"]) for i in v), "a list of {name, shape}"),
}
BATCH_FIELDS = {key: (lambda v: _is_int(v) and v > 0, "a positive integer") for key in ("min", "max")}


def check_fields(meta, fields: dict, path, prefix: str = "") -> None:
    """One clear error naming every missing or ill-typed field, instead of a KeyError later."""
    if not isinstance(meta, dict):
        problems = [f"{prefix.rstrip('.') or 'the top level'} is not an object"]
    else:
        problems = [f"{prefix}{key} ({'missing' if key not in meta else 'got ' + repr(meta[key])[:40]}; expected {what})"
                    for key, (ok, what) in fields.items() if key not in meta or not ok(meta[key])]
    if problems:
        raise DiffPruneError(
            f"{str(path)!r} is not a valid diffprune artifact description: {'; '.join(problems)}. It was written by "
            "another tool or edited by hand; re-create the artifact with `diffprune export` (or `diffprune build`)."
        )


# A UNet (its first input ``sample``) also describes its sample; text encoders and decoders need not.
UNET_FIELDS = ("in_channels", "sample_size")


def check_spec(meta, path, prefix: str = "") -> None:
    """Check model.json (or engine.json's "model") against what the runners read."""
    takes_sample = isinstance(meta, dict) and isinstance(meta.get("inputs"), list) and any(
        isinstance(i, dict) and i.get("name") == "sample" for i in meta["inputs"])
    fields = SPEC_FIELDS if takes_sample or not isinstance(meta, dict) or "inputs" not in meta else {
        k: v for k, v in SPEC_FIELDS.items() if k not in UNET_FIELDS}
    check_fields(meta, fields, path, prefix)
    check_fields(meta["batch"], BATCH_FIELDS, path, prefix + "batch.")
    if meta["batch"]["min"] > meta["batch"]["max"]:
        raise DiffPruneError(f"{str(path)!r}: {prefix}batch.min {meta['batch']['min']} is above batch.max "
                             f"{meta['batch']['max']}; re-create the artifact with `diffprune export`.")


def check_onnx_files(folder, meta: dict) -> None:
    """The graph and, for exports with external weights, ``model.onnx.data`` must both be there."""
    folder = Path(folder)
    for key, default in (("file", "model.onnx"), ("weights_file", None)):
        name = meta.get(key, default)
        if name and not (folder / name).is_file():
            raise DiffPruneError(
                f"{str(folder / name)!r} is missing; the export folder {str(folder)!r} is incomplete "
                f"(model.json lists {meta.get('file', 'model.onnx')}"
                f"{' and ' + meta['weights_file'] if meta.get('weights_file') else ''}). Copy the whole folder, "
                "or re-run `diffprune export`."
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
