"""UNet2DModel -> ONNX, validated against torch before anything is written.

Graph contract (what the runtime and TensorRT rely on):
    inputs   sample    float32 (B, C, H, W)   the noisy image x_t
             timestep  float32 (B,)           one timestep per sample (guidance and mixed-t batches)
    output   out_sample float32 (B, C, H, W)  the model's prediction (epsilon, v or x0)
B is dynamic; H and W are fixed unless ``dynamic_hw``. fp16 graphs keep float32 I/O and cast inside.

Exporter: torch.export-based (``dynamo=True``) by default. On these UNets both exporters are exact
(max-abs error ~2e-6 vs torch) and equally fast under ONNX Runtime (CIFAR-10 DDPM: 71 vs 73 ms at
batch 1 on 2 CPU cores), but the torch.export graph has half the nodes (788 vs 1638: no Constant/
Identity litter), which keeps TensorRT parsing and graph inspection simple, and the TorchScript
exporter is deprecated upstream. It is slower to export (17 s vs 6 s); ``exporter="torchscript"``
remains as a fallback.
"""

import contextlib
import hashlib
import io
import json
import logging
import warnings
import time
from dataclasses import dataclass
from pathlib import Path

from diffprune._io import atomic_dir
from diffprune.errors import DiffPruneError

from .validate import validate

TWO_GB = 2 * 1024**3
MODEL_JSON = "model.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
WEIGHTS = ("external", "inline")


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    model_json: dict
    seconds: float

    @property
    def files(self) -> list:
        """The graph and, when the weights are external, ``model.onnx.data``."""
        weights = self.model_json.get("weights_file")
        return [self.onnx_path] + ([self.out_dir / weights] if weights else [])

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def _wrapper(unet):
    import torch

    class UNetForExport(torch.nn.Module):
        """Plain tensors in and out: (sample, timestep) -> out_sample."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep):
            return self.unet(sample, timestep).sample

    return UNetForExport(unet).eval()


def weights_sha256(model) -> str:
    """A hash of the weights (names, shapes and bytes), the same for the same model from any source."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_batches(batch):
    try:
        lo, opt, hi = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise DiffPruneError(f"batch {batch!r} is invalid; give (min, opt, max), e.g. (1, 8, 64).") from None
    if not 1 <= lo <= opt <= hi:
        raise DiffPruneError(f"batch range (min {lo}, opt {opt}, max {hi}) is invalid; need 1 <= min <= opt <= max.")
    return lo, opt, hi


def _export(wrapper, example, opset: int, batch, dynamic_hw: bool, exporter: str):
    import torch

    names = dict(input_names=["sample", "timestep"], output_names=["out_sample"], opset_version=opset)
    if exporter == "dynamo":
        b = torch.export.Dim("batch", min=1, max=max(batch[2], 2))
        sample_dims = {0: b}
        if dynamic_hw:
            sample_dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
        program = torch.onnx.export(wrapper, example, dynamo=True, verbose=False, external_data=False,
                                    dynamic_shapes={"sample": sample_dims, "timestep": {0: b}}, **names)
        program.optimize()
        proto = program.model_proto
    elif exporter == "torchscript":
        axes = {"sample": {0: "batch"}, "timestep": {0: "batch"}, "out_sample": {0: "batch"}}
        if dynamic_hw:
            axes["sample"].update({2: "height", 3: "width"})
            axes["out_sample"].update({2: "height", 3: "width"})
        buffer = io.BytesIO()
        torch.onnx.export(wrapper, example, buffer, dynamo=False, dynamic_axes=axes, **names)
        import onnx

        proto = onnx.load_from_string(buffer.getvalue())
    else:
        raise DiffPruneError(f"exporter {exporter!r} is unknown; allowed: dynamo, torchscript.")
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx narrates each stage and warns about optional packages; keep the CLI readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _save(proto, path: Path, weights: str = "external"):
    """Write the graph; with ``weights="external"`` the tensors go to ``model.onnx.data`` beside it.

    ONNX Runtime reads external weights straight into its tensors; inline ones are first parsed into
    the protobuf and then copied, and the process keeps both high-water marks. On the CIFAR-10 UNet
    (144 MB of weights) a process that loads it and samples at batch 1 peaks at about 231 MiB instead
    of 378-412 MiB (benchmarks/results/e2e_cpu). Graphs over 2 GB need them anyway (protobuf limit).
    """
    import onnx

    large = proto.ByteSize() > TWO_GB - 64 * 1024**2
    external = weights == "external" or large
    onnx.save_model(proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE if external else None, size_threshold=1024)
    return external


def io_specs(proto) -> dict:
    import onnx

    def spec(value):
        t = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [spec(v) for v in proto.graph.input], "outputs": [spec(v) for v in proto.graph.output]}


def to_onnx(model_or_folder, out_dir, dtype: str = "fp32", opset: int = 18, batch=(1, 8, 64),
            dynamic_hw: bool = False, exporter: str = "dynamo", slim: bool = False, validate_batches=None,
            triton=None, weights: str = "external", overwrite: bool = False) -> ExportResult:
    """Export a UNet2DModel (or any model folder / hub id ``diffprune`` can load) to ``out_dir``.

    Writes ``model.onnx`` and ``model.json``; validation (onnx.checker, shape inference, ONNX Runtime
    vs torch at several batch sizes and timesteps) runs first, and a failure leaves nothing behind.
    ``dtype="fp16"`` stores the graph in float16 with normalisation and softmax kept in float32.
    ``triton`` names a Triton model repository to write beside it. ``weights="external"`` (default)
    stores the tensors in ``model.onnx.data``, which runtimes load without a protobuf copy (less peak memory);
    ``"inline"`` keeps one self-contained ``model.onnx``.
    """
    import torch

    from diffprune.models import load_source, require_unconditional, versions

    if dtype not in ("fp32", "fp16"):
        raise DiffPruneError(f"dtype {dtype!r} is not supported; allowed: fp32, fp16.")
    if not 13 <= int(opset) <= 23:
        raise DiffPruneError(f"opset {opset} is out of range; allowed: 13..23 (default 18).")
    lo, opt, hi = _check_batches(batch)
    if weights not in WEIGHTS:
        raise DiffPruneError(f"weights {weights!r} is unknown; allowed: {', '.join(WEIGHTS)} (external: tensors in "
                             f"{WEIGHTS_FILE} beside the graph, less memory at load; inline: one file).")
    from diffprune._io import check_writable

    check_writable(out_dir, overwrite)
    started = time.perf_counter()
    unet, scheduler_config, source = load_source(model_or_folder, device="cpu")
    require_unconditional(unet, "ONNX export")
    unet = unet.float().eval()
    cfg = unet.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    wrapper = _wrapper(unet)
    example = (torch.randn(2, cfg.in_channels, *size), torch.tensor([1.0, 500.0]))
    with torch.no_grad(), _quiet_exporter():
        proto = _export(wrapper, example, opset, (lo, opt, hi), dynamic_hw, exporter)
    if dtype == "fp16":
        from .fp16 import to_fp16

        proto = to_fp16(proto)
    slim_report = None
    if slim:
        from .slim import slim_graph

        proto, slim_report = slim_graph(proto)

    pruning = None
    if source.get("format") == "diffprune":
        pruning = json.loads((Path(source["source"]) / "pruning.json").read_text())
        pruning.pop("widths", None)
    from diffprune.models import count_macs_params

    macs, params = count_macs_params(unet)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        onnx_path = tmp / ONNX_FILE
        external = _save(proto, onnx_path, weights)
        # Several batch sizes, capped at 8 so validation stays seconds on a CPU.
        batches = validate_batches or sorted({lo, min(max(lo, 2), hi), min(opt, 8), hi if hi <= 8 else lo})
        report = validate(onnx_path, wrapper, dtype, batches, scheduler_config.get("num_train_timesteps", 1000))
        meta = {
            "format": "diffprune.onnx/1",
            "file": ONNX_FILE,
            "weights_file": WEIGHTS_FILE if external else None,
            **io_specs(proto),
            "dtype": dtype,
            "io_dtype": "float32",
            "batch": {"min": lo, "opt": opt, "max": hi},
            "sample_size": list(size),
            "in_channels": cfg.in_channels,
            "dynamic_hw": dynamic_hw,
            "opset": opset,
            "exporter": exporter,
            "scheduler": scheduler_config,
            "source": {**source, "weights_sha256": weights_sha256(unet)},
            "params": params,
            "macs": macs,
            "pruning": pruning,
            "validation": report,
            "slim": slim_report,
            "versions": {**versions(), **_onnx_versions()},
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=1, default=str))
    out_dir = Path(out_dir)
    if triton:
        from .triton import write_repository

        write_repository(triton, out_dir, overwrite=overwrite)
    return ExportResult(out_dir, out_dir / ONNX_FILE, meta, time.perf_counter() - started)


def _onnx_versions() -> dict:
    import onnx

    out = {"onnx": onnx.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out
