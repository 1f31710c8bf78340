"""TensorRT engines from a validated ONNX export (TensorRT Python API).

The network is strongly typed: precision comes from the ONNX graph (export with dtype="fp16" for a
half-precision engine), as TensorRT 10.12+ expects; in TensorRT 11 strong typing is the only mode.
One optimization profile covers the export's batch range. The timing cache is loaded when present
and saved after the build, so rebuilding (another profile, a pruned sibling) re-times little.

A pipeline export (pipeline.json) builds one engine per component (:func:`build_pipeline`), each with
one profile whose shapes come from its graph's inputs, as NVIDIA's TensorRT diffusion demo
(demo/Diffusion) sets them: the text encoders over (B, L) token ids, the UNet over the doubled batch
of classifier-free guidance (2B) with (2B, L, D) text states (L is the export's fixed text length, the
tokenizer's: CLIP's 77 unless the pipeline says otherwise, so min = opt = max), the VAE decoder over B latents. :func:`profile_shapes` and :func:`pipeline_profiles`
compute them without TensorRT, so they are tested everywhere.

Needs the ``tensorrt`` package and an NVIDIA GPU. Tested where both exist; elsewhere the functions
raise a DiffPruneError that says what is missing.
"""

import json
import time
from pathlib import Path

from diffprune._io import atomic_dir, atomic_write_bytes
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import ENGINE_JSON, PIPELINE_JSON, TENSORRT_FORMAT, TEXT_KINDS, read_pipeline_json

ENGINE_FILE = "model.plan"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DiffPruneError(
            "Building a TensorRT engine needs the tensorrt package and an NVIDIA GPU; tensorrt is not "
            "installed here. On a GPU machine: pip install 'diffprune[gpu]'. ONNX Runtime runs the "
            "exported model without it (diffprune.runtime)."
        ) from None
    return trt


def gpu_identity() -> dict:
    """Name and compute capability of CUDA device 0 (what an engine is tied to)."""
    import torch

    if not torch.cuda.is_available():
        raise DiffPruneError(
            "No CUDA GPU is visible to torch, and TensorRT builds engines for the GPU it runs on. "
            "Run the build on the machine (or GPU model) that will serve the engine."
        )
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def profile_shapes(meta: dict, batch) -> dict:
    """{input name: (min, opt, max) shapes} of one optimization profile for the export described by
    ``meta`` (model.json): axis 0 (the batch) over ``batch`` = (min, opt, max), fixed axes as exported, and
    the spatial axes of a ``dynamic_hw`` export at its sample size."""
    lo, opt, hi = batch
    shapes = {}
    for spec in meta["inputs"]:
        dims = []
        for axis, d in enumerate(spec["shape"]):
            if axis == 0:
                dims.append(None)
            elif isinstance(d, int):
                dims.append(d)
            elif axis in (2, 3) and "sample_size" in meta:
                dims.append(meta["sample_size"][axis - 2])
            else:
                raise DiffPruneError(
                    f"Input {spec['name']!r} has a dynamic axis {axis} ({d!r}) that no profile setting covers; "
                    "re-export with fixed sizes (without --dynamic-hw).")
        shapes[spec["name"]] = tuple(tuple(b if x is None else x for x in dims) for b in (lo, opt, hi))
    return shapes


def _profile_batch(meta: dict, batch, onnx_dir) -> tuple:
    """The (min, opt, max) batch of a single export's profile: ``batch``, else the exported range; checked."""
    from .validate import check_batch

    lo, opt, hi = batch or (meta["batch"]["min"], meta["batch"]["opt"], meta["batch"]["max"])
    if not 1 <= lo <= opt <= hi:
        raise DiffPruneError(f"batch range ({lo}, {opt}, {hi}) is invalid; need 1 <= min <= opt <= max.")
    for b in (lo, hi):
        check_batch(meta, b, onnx_dir)  # the profile must lie inside the exported range
    return lo, opt, hi


def engine_profiles(onnx_dir, batch=None) -> dict:
    """{component: {input: (min, opt, max) shapes}} of the engines :func:`build_engine` ("model") or, for a
    pipeline export, :func:`build_pipeline` (one per component) builds from ``onnx_dir``, checked as they
    check them; needs no TensorRT (``diffprune build --print-profiles``)."""
    from .validate import verify_export

    if (Path(onnx_dir) / PIPELINE_JSON).is_file():
        return pipeline_profiles(onnx_dir, batch)
    meta = verify_export(onnx_dir)
    return {"model": profile_shapes(meta, _profile_batch(meta, batch, Path(onnx_dir)))}


def build_engine(onnx_dir, out_dir=None, workspace_gb: float = 4.0, optimization_level: int = 3,
                 timing_cache=None, hardware_compatible: bool = False, version_compatible: bool = False,
                 batch=None, overwrite: bool = False) -> Path:
    """Build ``model.plan`` + ``engine.json`` from the ONNX export in ``onnx_dir``.

    ``batch`` (min, opt, max) overrides the export's range for the optimization profile.
    ``timing_cache`` is a file path (default: ``timing.cache`` beside the output folder).
    ``hardware_compatible`` builds for Ampere and newer GPUs instead of this one (slower engine);
    ``version_compatible`` lets newer TensorRT runtimes load it (lean runtime, slower build).
    """
    from .validate import verify_export

    onnx_dir = Path(onnx_dir)
    meta = verify_export(onnx_dir)
    if not 0 <= optimization_level <= 5:
        raise DiffPruneError(f"optimization_level {optimization_level} is out of range; allowed 0..5 (default 3).")
    if workspace_gb <= 0:
        raise DiffPruneError(f"workspace_gb {workspace_gb} must be positive.")
    lo, opt, hi = _profile_batch(meta, batch, onnx_dir)
    out_dir = Path(out_dir) if out_dir else onnx_dir.with_name(onnx_dir.name + "-trt")
    from diffprune._io import check_writable

    check_writable(out_dir, overwrite)
    trt = _import_tensorrt()
    gpu = gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_dir / meta.get("file", "model.onnx"))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DiffPruneError(f"TensorRT's ONNX parser rejects {str(onnx_dir)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 1024**3))
    config.builder_optimization_level = optimization_level
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    shapes = profile_shapes(meta, (lo, opt, hi))
    profile = builder.create_optimization_profile()
    for name, (smallest, best, largest) in shapes.items():
        profile.set_shape(name, smallest, best, largest)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else out_dir.parent / "timing.cache"
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DiffPruneError("TensorRT failed to build the engine; run with a larger workspace_gb or see the log above.")
    seconds = time.perf_counter() - started
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / ENGINE_FILE).write_bytes(bytes(serialized))
        record = {
            "format": TENSORRT_FORMAT,
            "file": ENGINE_FILE,
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "hardware_compatible": hardware_compatible,
            "version_compatible": version_compatible,
            "profile": {"batch": {"min": lo, "opt": opt, "max": hi},
                        "shapes": {n: [list(x) for x in v] for n, v in shapes.items()}},
            "precision": meta["dtype"],
            "optimization_level": optimization_level,
            "workspace_gb": workspace_gb,
            "build_seconds": round(seconds, 2),
            "timing_cache": str(cache_path),
            "model": meta,
        }
        (tmp / ENGINE_JSON).write_text(json.dumps(record, indent=1, default=str))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return out_dir


def pipeline_profiles(pipeline_dir, batch=None) -> dict:
    """{component: {input: (min, opt, max) shapes}} for the pipeline export in ``pipeline_dir``. ``batch``
    (min, opt, max) counts images; the components that run the guidance batch (UNet and text encoders of a
    text-conditioned pipeline) get it doubled, as exported. Default: each component's exported range."""
    from .validate import check_batch, verify_export

    pipeline_dir = Path(pipeline_dir)
    record = read_pipeline_json(pipeline_dir)
    guided = record["kind"] in TEXT_KINDS  # [uncond; cond] in one batch
    out = {}
    for name, sub in record["components"].items():
        meta = verify_export(pipeline_dir / sub)
        if batch is None:
            b = (meta["batch"]["min"], meta["batch"]["opt"], meta["batch"]["max"])
        else:
            lo, opt, hi = batch
            if not 1 <= lo <= opt <= hi:
                raise DiffPruneError(f"batch range ({lo}, {opt}, {hi}) is invalid; need 1 <= min <= opt <= max.")
            doubled = guided and (name == "unet" or name.startswith("text_encoder"))
            b = (lo, 2 * opt, 2 * hi) if doubled else (lo, opt, hi)
            for x in (b[0], b[2]):
                check_batch(meta, x, pipeline_dir / sub)
        out[name] = profile_shapes(meta, b)
    return out


def build_pipeline(pipeline_dir, out_dir=None, batch=None, overwrite: bool = False, **options) -> Path:
    """One engine per component of the pipeline export in ``pipeline_dir``, written as ``out_dir``/<component>/
    (model.plan + engine.json) beside a copy of pipeline.json (+ "engines") and the tokenizer folders, so
    the folder is a pipeline the runtime runs on TensorRT. ``options`` go to :func:`build_engine`."""
    import shutil

    pipeline_dir = Path(pipeline_dir)
    record = read_pipeline_json(pipeline_dir)
    profiles = pipeline_profiles(pipeline_dir, batch)  # checks every component before TensorRT is needed
    out_dir = Path(out_dir) if out_dir else pipeline_dir.with_name(pipeline_dir.name + "-trt")
    from diffprune._io import check_writable

    check_writable(out_dir, overwrite)
    _import_tensorrt()
    gpu_identity()
    cache = options.pop("timing_cache", None) or out_dir.parent / "timing.cache"
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for name, sub in record["components"].items():
            shapes = profiles[name]
            first = next(iter(shapes.values()))
            b = (first[0][0], first[1][0], first[2][0])
            build_engine(pipeline_dir / sub, tmp / sub, batch=b, timing_cache=cache, **options)
        for sub in (record.get("tokenizers") or {}).values():
            shutil.copytree(pipeline_dir / sub, tmp / sub)
        engines = {name: {"folder": sub, "profile": {k: [list(x) for x in v] for k, v in profiles[name].items()}}
                   for name, sub in record["components"].items()}
        (tmp / PIPELINE_JSON).write_text(json.dumps({**record, "engines": engines}, indent=1, default=str))
    return out_dir
