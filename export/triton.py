"""A Triton Inference Server model repository for an exported UNet.

    REPO/NAME/config.pbtxt        platform, dynamic batching, input/output specs
    REPO/NAME/1/model.onnx        (onnxruntime_onnx)  or  REPO/NAME/1/model.plan (tensorrt_plan)

Triton's batch dimension is implicit (``max_batch_size`` > 0), so ``sample`` is declared (C, H, W) and
the per-sample ``timestep`` (B,) is declared [1] and reshaped to a scalar per request; every input and
output is declared from the export's model.json the same way (axis 0 dropped, other dynamic axes -1).

A pipeline export (pipeline.json) becomes one Triton model per component (:func:`write_pipeline_repository`):
text_encoder[_2], unet, vae_decoder / vq_decoder; and a Python-backend model ``pipeline`` that runs the
sampling loop inside the server, as NVIDIA's Stable Diffusion tutorial does (an ensemble cannot: it is a DAG
without loops, and each denoising step depends on the last). Its model.py is export/triton_pipeline.py: the
runtime's own loop (diffprune.runtime.Pipeline: tokenizer, numpy schedulers, guidance) calling the component
models through BLS, so a client sends PROMPT and receives IMAGES (uint8). The Python backend needs the
torch-free runtime installed (``pip install diffprune``). Config and model are tested without a server
(a stand-in ``triton_python_backend_utils`` calling the component ONNX files); not run on Triton here.

    REPO/pipeline/config.pbtxt                backend "python", max_batch_size 0 (a request is a batch)
    REPO/pipeline/1/model.py                  export/triton_pipeline.py
    REPO/pipeline/1/pipeline/                 pipeline.json, tokenizer[_2]/, <component>/model.json
"""

import shutil
from pathlib import Path

from diffprune._io import atomic_dir
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import (ENGINE_JSON, MODEL_JSON, PIPELINE_JSON, TEXT_KINDS, read_engine_json, read_model_json,
                                       read_pipeline_json)

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


# The loop model's inputs: name -> (Triton type, dims); all optional but PROMPT for text pipelines.
LOOP_INPUTS = {"PROMPT": ("TYPE_STRING", [-1]), "NEGATIVE_PROMPT": ("TYPE_STRING", [-1]), "N": ("TYPE_INT32", [1]),
               "CLASS_LABELS": ("TYPE_INT64", [-1]), "STEPS": ("TYPE_INT32", [1]), "GUIDANCE": ("TYPE_FP32", [1]),
               "SEED": ("TYPE_INT64", [1]), "SCHEDULER": ("TYPE_STRING", [1])}


def loop_config_pbtxt(name: str, record: dict, prefix: str) -> str:
    """config.pbtxt of the Python-backend loop model: inputs LOOP_INPUTS, output IMAGES uint8 (N, H, W, C)."""
    h, w = (record.get("image") or {}).get("size") or [-1, -1]
    channels = (record.get("image") or {}).get("channels") or -1
    text = record["kind"] in TEXT_KINDS
    inputs = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ {", ".join(map(str, d))} ]\n'
        f'    optional: {"false" if n == "PROMPT" and text else "true"}\n  }}'
        for n, (t, d) in LOOP_INPUTS.items())
    return f"""name: "{name}"
backend: "python"
max_batch_size: 0
input [
{inputs}
]
output [
  {{
    name: "IMAGES"
    data_type: TYPE_UINT8
    dims: [ -1, {h}, {w}, {channels} ]
  }}
]
parameters [
  {{
    key: "component_prefix"
    value: {{ string_value: "{prefix}" }}
  }}
]
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
"""


def write_loop_model(repo, pipeline_dir, name: str = "pipeline", prefix: str = "", overwrite: bool = False) -> Path:
    """Add the Python-backend model ``name`` that runs the sampling loop of the pipeline export ``pipeline_dir``
    over the component models ``prefix + component`` of the same repository (see the module docstring)."""
    from .triton_pipeline import PIPELINE_FOLDER

    pipeline_dir = Path(pipeline_dir)
    record = read_pipeline_json(pipeline_dir)
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    with atomic_dir(repo / name, overwrite=overwrite) as tmp:
        version = tmp / "1"
        version.mkdir()
        shutil.copy2(Path(__file__).with_name("triton_pipeline.py"), version / "model.py")
        spec_dir = version / PIPELINE_FOLDER
        spec_dir.mkdir()
        shutil.copy2(pipeline_dir / PIPELINE_JSON, spec_dir / PIPELINE_JSON)
        for sub in (record.get("tokenizers") or {}).values():
            shutil.copytree(pipeline_dir / sub, spec_dir / sub)
        for sub in record["components"].values():  # the runners check inputs against these; weights stay out
            meta = ENGINE_JSON if (pipeline_dir / sub / ENGINE_JSON).is_file() else MODEL_JSON
            (spec_dir / sub).mkdir(parents=True)
            shutil.copy2(pipeline_dir / sub / meta, spec_dir / sub / meta)
        (tmp / "config.pbtxt").write_text(loop_config_pbtxt(name, record, prefix))
    return repo / name


def write_pipeline_repository(repo, pipeline_dir, prefix: str = "", overwrite: bool = False,
                              loop: bool = True) -> dict:
    """Add every component of the pipeline export (or pipeline engine folder) in ``pipeline_dir`` to the
    Triton repository ``repo``, as models ``prefix + component``, and with ``loop`` the Python-backend model
    ``prefix + "pipeline"`` that samples over them (prompt in, images out); returns {component or "pipeline":
    model folder}. Without ``loop`` the client runs the loop (diffprune.runtime with the export's pipeline.json
    and tokenizer folders)."""
    pipeline_dir = Path(pipeline_dir)
    record = read_pipeline_json(pipeline_dir)
    models = {name: write_repository(repo, pipeline_dir / sub, name=prefix + name, overwrite=overwrite)
              for name, sub in record["components"].items()}
    if loop:
        models["pipeline"] = write_loop_model(repo, pipeline_dir, prefix + "pipeline", prefix, overwrite=overwrite)
    return models
