"""A Triton Inference Server model repository for an exported UNet.

    REPO/NAME/config.pbtxt        platform, dynamic batching, input/output specs
    REPO/NAME/1/model.onnx        (onnxruntime_onnx)  or  REPO/NAME/1/model.plan (tensorrt_plan)

Triton's batch dimension is implicit (``max_batch_size`` > 0), so ``sample`` is declared (C, H, W) and
the per-sample ``timestep`` (B,) is declared [1] and reshaped to a scalar per request.
"""

import json
import shutil
from pathlib import Path

from diffprune._io import atomic_dir
from diffprune.errors import DiffPruneError

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def config_pbtxt(name: str, platform: str, meta: dict) -> str:
    batch = meta["batch"]
    chw = [meta["in_channels"], *([-1, -1] if meta.get("dynamic_hw") else meta["sample_size"])]
    io_type = TRITON_TYPES[meta.get("io_dtype", "float32")]
    preferred = sorted({batch["opt"], batch["max"]})
    dims = ", ".join(str(d) for d in chw)
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {batch['max']}
input [
  {{
    name: "sample"
    data_type: {io_type}
    dims: [ {dims} ]
  }},
  {{
    name: "timestep"
    data_type: {io_type}
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
output [
  {{
    name: "out_sample"
    data_type: {io_type}
    dims: [ {dims} ]
  }}
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
    if (artifact_dir / "engine.json").is_file():
        meta, kind = json.loads((artifact_dir / "engine.json").read_text()), "tensorrt"
        meta = {**meta["model"], "batch": meta["profile"]["batch"]}
    elif (artifact_dir / "model.json").is_file():
        meta, kind = json.loads((artifact_dir / "model.json").read_text()), "onnx"
    else:
        raise DiffPruneError(f"{str(artifact_dir)!r} holds neither model.json (ONNX export) nor engine.json (TensorRT build).")
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
