"""A Triton Inference Server model repository for an exported UNet.

    REPO/NAME/config.pbtxt        platform, dynamic batching, input/output specs
    REPO/NAME/1/model.onnx        (onnxruntime_onnx)  or  REPO/NAME/1/model.plan (tensorrt_plan)

Triton's batch dimension is implicit (``max_batch_size`` > 0), so ``sample`` is declared (C, H, W) and
the per-sample ``timestep`` (B,) is declared [1] and reshaped to a scalar per request; every input and
output is declared from the export's model.json the same way (axis 0 dropped, other dynamic axes -1).

A pipeline export (pipeline.json) becomes one Triton model per component (:func:`write_pipeline_repository`):
text_encoder[_2], unet, vae_decoder / vq_decoder. The sampling loop does not live in Triton: an ensemble
is a DAG without loops, and each denoising step depends on the last, so the client runs tokenizer ->
text_encoder once, the scheduler loop calling unet (one request of 2B for classifier-free guidance per
step), then vae_decoder - what diffprune.runtime does with local runners, reading the pipeline export's
pipeline.json and tokenizer folders. Running the loop inside the server would need a Python-backend
(BLS) model; that is not written here.
"""

import shutil
from pathlib import Path

from diffprune._io import atomic_dir
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import ENGINE_JSON, MODEL_JSON, read_engine_json, read_model_json, read_pipeline_json

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def _tensor(spec: dict, io_dtype: str, indent: str = "  ") -> str:
    """One input/output entry: the batch axis dropped (Triton adds it), symbolic axes -1; a per-sample
    scalar (shape (B,)) is declared [1] and reshaped to a scalar per request."""
    dims = [d if isinstance(d, int) else -1 for d in spec["shape"][1:]]
    dtype = TRITON_TYPES[spec.get("dtype", io_dtype)]
    lines = [f'{indent}{{', f'{indent}  name: "{spec["name"]}"', f'{indent}  data_type: {dtype}',
             f'{indent}  dims: [ {", ".join(str(d) for d in dims) if dims else "1"} ]']
    if not dims:
        lines.append(f'{indent}  reshape: {{ shape: [ ] }}')
    lines.append(f'{indent}}}')
    return "\n".join(lines)


def config_pbtxt(name: str, platform: str, meta: dict) -> str:
    batch = meta["batch"]
    io_type = meta.get("io_dtype", "float32")
    preferred = sorted({batch["opt"], batch["max"]})
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    inputs = ",\n".join(_tensor(spec, io_type) for spec in meta["inputs"])
    outputs = ",\n".join(_tensor(spec, io_type) for spec in meta["outputs"])
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {batch['max']}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{
  preferred_batch_size: [ {', '.join(map(str, preferred))} ]
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    kind: {kind}
    count: 1
  }}
]
"""


def write_repository(repo, artifact_dir, name: str | None = None, overwrite: bool = False) -> Path:
    """Add the ONNX export (a folder with model.json) or TensorRT build (engine.json) in
    ``artifact_dir`` to the Triton repository ``repo`` as model ``name``."""
    artifact_dir = Path(artifact_dir)
    if (artifact_dir / ENGINE_JSON).is_file():
        meta, kind = read_engine_json(artifact_dir), "tensorrt"
        meta = {**meta["model"], "batch": meta["profile"]["batch"]}
    elif (artifact_dir / MODEL_JSON).is_file():
        meta, kind = read_model_json(artifact_dir), "onnx"
    else:
        raise DiffPruneError(f"{str(artifact_dir)!r} holds neither {MODEL_JSON} (ONNX export) nor {ENGINE_JSON} (TensorRT build).")
    platform, filename = PLATFORMS[kind]
    name = name or ("unet" if kind == "onnx" else "unet_trt")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    with atomic_dir(repo / name, overwrite=overwrite) as tmp:
        (tmp / "1").mkdir()
        source = artifact_dir / ("model.onnx" if kind == "onnx" else "model.plan")
        shutil.copy2(source, tmp / "1" / filename)
        data = artifact_dir / "model.onnx.data"
        if kind == "onnx" and data.exists():
            shutil.copy2(data, tmp / "1" / data.name)
        (tmp / "config.pbtxt").write_text(config_pbtxt(name, platform, meta))
    return repo / name


def write_pipeline_repository(repo, pipeline_dir, prefix: str = "", overwrite: bool = False) -> dict:
    """Add every component of the pipeline export (or pipeline engine folder) in ``pipeline_dir`` to the
    Triton repository ``repo``, as models ``prefix + component``; returns {component: model folder}.
    The client keeps ``pipeline_dir``'s pipeline.json and tokenizer folders (see the module docstring)."""
    pipeline_dir = Path(pipeline_dir)
    record = read_pipeline_json(pipeline_dir)
    return {name: write_repository(repo, pipeline_dir / sub, name=prefix + name, overwrite=overwrite)
            for name, sub in record["components"].items()}
