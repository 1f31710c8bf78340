"""Runners: one UNet forward on a backend. Backends are imported lazily, inside their own file."""

from pathlib import Path

from ..artifact import describe
from ..errors import DiffPruneError

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")


def open_runner(artifact, backend: str = "ort-cpu", threads: int | None = None, cuda_graph: bool = False,
                batch: int | None = None):
    """A runner for ``artifact`` (an export folder with model.json or an engine folder with engine.json).

    ``backend``: ort-cpu, ort-cuda, ort-trt (ONNX Runtime execution providers) or trt (native engine).
    ``batch`` pins ONNX Runtime sessions to one batch size, which lets it fold the graph's shape
    arithmetic (1-3 % faster on the CIFAR-10 UNet on CPU); other batch sizes are then refused.
    Use it as a context manager: ``with open_runner(path) as run: out = run(sample, timestep)``.
    """
    if backend not in BACKENDS:
        raise DiffPruneError(f"Backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}.")
    kind, folder, meta = describe(Path(artifact))
    if backend == "trt":
        if kind != "tensorrt":
            raise DiffPruneError(
                f"Backend trt needs a TensorRT engine folder (engine.json), but {str(folder)!r} is an ONNX export. "
                "Build one with `diffprune build`, or use --backend ort-cpu / ort-cuda / ort-trt."
            )
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(folder, meta, cuda_graph=cuda_graph)
    if kind != "onnx":
        raise DiffPruneError(
            f"Backend {backend} runs ONNX exports, but {str(folder)!r} is a TensorRT engine; use --backend trt."
        )
    from .onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(folder, meta, device={"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[backend],
                             threads=threads, batch=batch)


__all__ = ["BACKENDS", "open_runner"]
