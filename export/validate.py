"""Export validation: a graph that does not hold is an error, not a warning.

onnx.checker, strict shape inference, then ONNX Runtime (CPU) against the torch model on fresh random
inputs at several batch sizes and timesteps. fp32 must agree to max-abs 1e-4; fp16 (compared with the
fp32 torch model) to 1e-2 of the output's scale, and never produce NaN or Inf.
"""

import os
import tempfile
from pathlib import Path

import numpy as np

from diffprune.errors import DiffPruneError

from .graph_io import io_specs

TOLERANCE = {"fp32": {"max_abs": 1e-4}, "fp16": {"max_rel": 1e-2}}


def ort_session(path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise DiffPruneError(
            "Validating an ONNX export needs onnxruntime, which is not installed. Install it with "
            "pip install 'diffprune[cpu]' (or onnxruntime-gpu through the [gpu] extra)."
        ) from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        raise DiffPruneError(f"ONNX Runtime cannot load {str(path)!r}: {str(e).splitlines()[0]}") from None


def structural_checks(path: Path) -> dict:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise DiffPruneError(
            f"onnx.checker rejects {str(path)!r}: {str(e).splitlines()[0]} The file is corrupt or the "
            "graph is invalid; re-run `diffprune export`."
        ) from None
    fd, inferred = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(path), inferred, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError or plain RuntimeError depending on version
        raise DiffPruneError(f"ONNX shape inference fails on {str(path)!r}: {str(e).splitlines()[0]}") from None
    finally:
        os.unlink(inferred)
    return {"checker": "ok", "shape_inference": "ok"}


def validate(path, torch_model, dtype: str, batches, num_train_timesteps: int = 1000, seed: int = 0,
             conditioning=None) -> dict:
    """Check a UNet graph at ``path`` against ``torch_model`` ((sample, timestep[, conditioning...]) -> out);
    raise DiffPruneError on failure. ``conditioning(batch, rng)`` gives the graph's other inputs (numpy,
    by name, in the graph's order) for a conditional UNet: text embeddings, SDXL's added inputs, labels."""

    def make_inputs(b, rng, session):
        (_, c, h, w) = {i.name: i for i in session.get_inputs()}["sample"].shape
        sample = rng.standard_normal((b, c, h, w)).astype(np.float32)
        # Spread timesteps over the schedule, ends included: errors often show at t = 0 or t = T - 1.
        timestep = np.linspace(0, num_train_timesteps - 1, b).round().astype(np.float32) if b > 1 else \
            rng.integers(0, num_train_timesteps, 1).astype(np.float32)
        return {"sample": sample, "timestep": timestep, **(conditioning(b, rng) if conditioning else {})}

    return validate_graph(path, torch_model, make_inputs, dtype, batches, seed=seed,
                          describe=lambda feeds: {"timesteps": [int(t) for t in feeds["timestep"][:4]]})


def validate_graph(path, torch_model, make_inputs, dtype: str, batches, tolerance: dict | None = None,
                   seed: int = 0, session=None, describe=None, what: str = "graph") -> dict:
    """Check the ONNX graph at ``path`` against ``torch_model`` on fresh inputs at each batch size of
    ``batches``: ``make_inputs(batch, rng, session)`` gives the feeds (numpy, by input name, in the
    graph's input order), ``torch_model(*tensors)`` the reference (one tensor, or a tuple in the graph's
    output order). Every output is compared; ``tolerance`` overrides :data:`TOLERANCE` for ``dtype``
    ({"max_abs": a} or {"max_rel": r}, relative to the output's largest magnitude). A graph that does
    not hold raises a DiffPruneError naming ``what``."""
    import torch

    path = Path(path)
    report = structural_checks(path)
    session = session or ort_session(path)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    cases = []
    for b in batches:
        feeds = make_inputs(b, rng, session)
        got = session.run(names, feeds)
        with torch.no_grad():
            ref = torch_model(*(torch.from_numpy(v) for v in feeds.values()))
        ref = [r.float().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        finite = all(bool(np.isfinite(g).all()) for g in got)
        errors = [float(np.abs(g.astype(np.float64) - r).max()) if finite else float("inf") for g, r in zip(got, ref)]
        max_abs = max(errors)
        max_rel = max(e / max(float(np.abs(r).max()), 1e-12) for e, r in zip(errors, ref))
        cases.append({"batch": int(b), **(describe(feeds) if describe else {}), "max_abs": max_abs,
                      "max_rel": max_rel, "finite": finite})
    worst_abs = max(c["max_abs"] for c in cases)
    worst_rel = max(c["max_rel"] for c in cases)
    tol = tolerance or TOLERANCE[dtype]
    passed = all(c["finite"] for c in cases) and (worst_abs <= tol["max_abs"] if "max_abs" in tol else worst_rel <= tol["max_rel"])
    import onnxruntime

    report.update({"backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider", "reference": "torch float32",
                   "cases": cases, "max_abs_error": worst_abs, "max_rel_error": worst_rel, "tolerance": tol,
                   "passed": passed})
    if not passed:
        bad = "NaN/Inf in the output (fp16 overflow?)" if not all(c["finite"] for c in cases) else \
            f"max-abs error {worst_abs:.3g}, relative {worst_rel:.3g}"
        raise DiffPruneError(
            f"The exported {dtype} {what} does not match the torch model: {bad}; allowed {tol}. Nothing was "
            "written. For fp16, try fp32 or report the model; for fp32, try exporter='torchscript'."
        )
    return report


def verify_export(onnx_dir, batch: int | None = None) -> dict:
    """Check an export folder before use: model.json readable, ONNX file intact, the graph's inputs
    and outputs as model.json says, and ``batch`` (if given) inside the exported batch range.
    Returns model.json's content."""
    import onnx

    from diffprune.runtime.artifact import check_onnx_files
    from diffprune.runtime.formats import MODEL_JSON, read_model_json

    onnx_dir = Path(onnx_dir)
    meta = read_model_json(onnx_dir)
    check_onnx_files(onnx_dir, meta)
    path = onnx_dir / meta.get("file", "model.onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and onnx's own errors
        raise DiffPruneError(
            f"{str(path)!r} is not a readable ONNX model ({type(e).__name__}); it is truncated or corrupt. "
            "Re-run `diffprune export`."
        ) from None
    actual = io_specs(proto)
    for key in ("inputs", "outputs"):
        if actual[key] != meta.get(key):
            raise DiffPruneError(
                f"{MODEL_JSON} in {str(onnx_dir)!r} does not match its graph: it declares {key} "
                f"{meta.get(key)}, the graph has {actual[key]}. The files come from different exports; "
                "re-run `diffprune export`."
            )
    if batch is not None:
        check_batch(meta, batch, onnx_dir)
    return meta


def check_batch(meta: dict, batch: int, where) -> None:
    lo, hi = meta["batch"]["min"], meta["batch"]["max"]
    if not lo <= batch <= hi:
        raise DiffPruneError(
            f"Batch {batch} is outside the exported range {lo}..{hi} of {str(where)!r}. Use a batch in "
            "that range, or re-export with --min-batch/--max-batch covering it."
        )
