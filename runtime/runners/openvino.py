"""OpenVINO runner: Intel CPUs, integrated GPUs and NPUs, torch-free.

The export's model.onnx is converted to OpenVINO IR once and kept in the cache folder
(``$DIFFPRUNE_CACHE/openvino/<key>/model.xml``), so later loads skip the ONNX front end. The key
hashes model.json and the ONNX files' names, sizes and modification times, and the OpenVINO
version: a re-export or an upgrade gets a new IR, never a stale one. An IR that fails to read is
removed and rebuilt.

A cache folder that cannot be written (a read-only home in a container) is no error: the ONNX
file is then converted at each load (about a second for the CIFAR-10 UNet).

Precision: OpenVINO's CPU plugin runs float32 graphs in bfloat16 on CPUs that have bf16 units
(AVX512_BF16, AMX), and in float32 elsewhere. ``precision="auto"`` (the default) keeps that choice,
as a plain ``compile_model`` does: on this project's CPU it is about 2x faster than float32, and
the images stay close to float32's (benchmarks/README.md measures both). ``"f32"`` forces float32,
so the images are those of ONNX Runtime within float rounding; ``"bf16"`` / ``"f16"`` ask for one.
The precision that runs is recorded in ``runner.info["precision"]``.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..errors import DiffPruneError
from ..formats import MODEL_JSON
from .base import Runner

PRECISIONS = ("auto", "f32", "bf16", "f16")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise DiffPruneError(
            "The openvino backend needs the openvino package: pip install 'diffprune[openvino]' "
            "(or pip install openvino); or use --backend ort-cpu."
        ) from None
    return openvino


def ir_cache_key(folder: Path, meta: dict, ov_version: str) -> str:
    """What identifies an export's IR: model.json, each ONNX file's name, size and mtime, OpenVINO's version."""
    h = hashlib.sha256((folder / MODEL_JSON).read_bytes() if (folder / MODEL_JSON).is_file() else b"")
    for name in (meta.get("file", "model.onnx"), meta.get("weights_file")):
        if name:
            st = (folder / name).stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(ov_version.encode())
    return h.hexdigest()[:20]


class OpenVINORunner(Runner):
    """``OpenVINORunner(folder, meta, device="CPU", threads=None, batch=None, precision="auto")``.

    ``device``: an OpenVINO device name (CPU, GPU, GPU.1, NPU, AUTO, ...). ``threads`` caps the CPU
    plugin's inference threads. ``batch`` reshapes the model to that static batch (as the ONNX Runtime
    runner pins it), which lets the plugin plan memory and kernels once; other batch sizes are then
    refused. The model is compiled for latency (one stream), as a deployment serving one request does.
    """

    def __init__(self, folder, meta: dict, device: str = "CPU", threads: int | None = None, batch: int | None = None,
                 precision: str = "auto"):
        super().__init__(folder, meta)
        self.pin_batch(batch)
        if precision not in PRECISIONS:
            raise DiffPruneError(f"OpenVINO precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}.")
        self.device = device.upper()
        self.threads = threads
        self.precision = precision
        self.backend = ("openvino" if self.device == "CPU" else f"openvino:{self.device}") + (
            "" if precision == "auto" else f"@{precision}")
        self.compiled = None
        self.request = None
        self.info = {}

    def _read(self, core, path: Path):
        try:
            return core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError with a multi-line C++ trace
            raise DiffPruneError(
                f"OpenVINO cannot read {str(path)!r}: {_first_line(e)} The file is missing, corrupt or from another "
                "export; re-create it (`diffprune export`, `diffprune quantize`)."
            ) from None

    def _load(self, ov, core) -> tuple:
        """``(model, cache_folder or None)``: the export's IR, read once.

        An IR folder (`diffprune quantize`) is read as it is. An ONNX export is read from its IR in the
        cache; when that is missing it is converted now and saved there, and when that is unreadable it
        is removed and converted again. Without a writable cache the ONNX file is read directly.
        """
        from ..artifact import check_onnx_files

        check_onnx_files(self.folder, self.meta)
        if str(self.meta.get("file", "")).endswith(".xml"):
            return self._read(core, self.folder / self.meta["file"]), None
        onnx_path = self.folder / self.meta.get("file", "model.onnx")
        try:
            root = cache_dir("openvino", create=True)
        except DiffPruneError:  # a read-only home in a container: convert the ONNX file at each load
            return self._read(core, onnx_path), None
        target = root / ir_cache_key(self.folder, self.meta, ov.__version__)
        if (target / "model.xml").is_file() and (target / "model.bin").is_file():
            try:
                return core.read_model(str(target / "model.xml")), target
            except Exception:
                shutil.rmtree(target, ignore_errors=True)  # a corrupt cached IR: convert again below
        model = self._read(core, onnx_path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            # Weights stay float32 in the IR (compress_to_fp16 would change the numbers before the
            # plugin's precision choice does).
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            (tmp / "source.json").write_text(json.dumps({"export": str(self.folder.resolve()),
                                                         "openvino": ov.__version__}))
            if target.exists():  # an incomplete IR left by a crash
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError:  # a full cache is no reason to fail: the model is in memory already
            shutil.rmtree(tmp, ignore_errors=True)
            return model, None
        return model, target

    def open(self):
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        devices = core.available_devices
        if self.device.split(":")[0].split(".")[0] not in {"AUTO", "MULTI", "HETERO"} | {d.split(".")[0] for d in devices}:
            raise DiffPruneError(
                f"OpenVINO device {self.device!r} is not available here; available: {', '.join(devices) or 'none'}. "
                "Use --backend openvino (CPU) or openvino:DEVICE with one of those."
            )
        model, cached = self._load(ov, core)
        self._check_inputs(model)
        if self.fixed_batch is not None:
            model.reshape({i.get_any_name(): [self.fixed_batch, *list(i.get_partial_shape())[1:]] for i in model.inputs})
        config = {hints.performance_mode: hints.PerformanceMode.LATENCY}
        if self.threads and self.device.startswith("CPU"):
            config[props.inference_num_threads] = int(self.threads)
        if self.precision != "auto":
            config[hints.inference_precision] = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[self.precision]
        try:
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as e:
            raise DiffPruneError(f"OpenVINO cannot compile this export for {self.device}: {_first_line(e)} "
                                 "Try --backend openvino (CPU), or another precision.") from None
        self.request = self.compiled.create_infer_request()
        try:  # what the plugin actually runs, e.g. bf16 for "auto" on a CPU with bf16 units
            actual = self.compiled.get_property(hints.inference_precision).get_type_name()
        except Exception:  # not every plugin reports it
            actual = self.precision
        self.info = {"device": self.device, "openvino": ov.__version__, "precision": actual,
                     "ir_cache": str(cached) if cached else None}
        return self

    def _check_inputs(self, model) -> None:
        graph = {i.get_any_name(): [d.get_length() if d.is_static else None for d in i.get_partial_shape()]
                 for i in model.inputs}
        declared = {i["name"]: [d if isinstance(d, int) else None for d in i["shape"]] for i in self.meta.get("inputs", [])}
        if graph != declared:
            raise DiffPruneError(
                f"model.json in {str(self.folder)!r} does not match its graph: it declares inputs {declared}, the "
                f"graph has {graph} (None = dynamic). Re-run `diffprune export`."
            )

    def close(self):
        self.request = None
        self.compiled = None

    def run(self, sample, timestep):
        # share_inputs: OpenVINO reads the numpy buffers in place instead of copying them per call.
        result = self.request.infer({"sample": sample, "timestep": timestep}, share_inputs=True)
        return np.array(result[0], copy=True)  # the request's output buffer is reused by the next call

    def run_feeds(self, feeds: dict) -> dict:
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}  # share_inputs needs contiguous buffers
        result = self.request.infer(feeds, share_inputs=True)
        return {name: np.array(result[self.compiled.output(name)], copy=True) for name in self.outputs}


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("Exception from", "Check "))]
    return (lines[0] if lines else type(e).__name__).rstrip(".") + "."
