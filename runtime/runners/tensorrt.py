"""Native TensorRT runner: deserialises an engine built by `diffprune build`, refuses one built for
another GPU or TensorRT version, runs with device buffers sized for the profile's largest batch, and
can replay each batch size as a CUDA graph (removes per-layer launch overhead at small batches).

Needs tensorrt and cuda-python (the [gpu] extra) and an NVIDIA GPU; exercised only where they exist.
"""

import numpy as np

from ..artifact import check_engine_compatible
from ..errors import DiffPruneError
from .base import Runner


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise DiffPruneError(
                "The TensorRT runner needs cuda-python for GPU memory and streams: pip install 'diffprune[gpu]'."
            ) from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DiffPruneError(f"CUDA call failed with error {err}; is an NVIDIA GPU with a working driver present?")
    return rest[0] if len(rest) == 1 else rest


class TensorRTRunner(Runner):
    backend = "trt"

    def __init__(self, folder, meta: dict, cuda_graph: bool = False):
        super().__init__(folder, {**meta["model"], "batch": meta["profile"]["batch"]})
        self.record = meta
        self.cuda_graph = cuda_graph
        self._graphs = {}

    def open(self):
        try:
            import tensorrt as trt
        except ImportError:
            raise DiffPruneError(
                "This artifact is a TensorRT engine, but the tensorrt package is not installed. On an NVIDIA GPU "
                "machine: pip install 'diffprune[gpu]'; elsewhere run the ONNX export with ONNX Runtime."
            ) from None
        cudart = self._cudart = _cudart()
        props = _check(cudart.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        check_engine_compatible(self.record, trt.__version__, f"{props.major}.{props.minor}", name)
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if self.record.get("version_compatible"):
            runtime.engine_host_code_allowed = True
        self.engine = runtime.deserialize_cuda_engine((self.folder / self.record.get("file", "model.plan")).read_bytes())
        if self.engine is None:
            raise DiffPruneError(f"TensorRT could not deserialise {str(self.folder)!r}; rebuild it with `diffprune build`.")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        c, (h, w) = self.in_channels, self.sample_size
        hi = self.batch_range[1]
        self._host_out = np.empty((hi, c, h, w), dtype=np.float32)
        self._dev = {
            "sample": _check(cudart.cudaMalloc(hi * c * h * w * 4)),
            "timestep": _check(cudart.cudaMalloc(hi * 4)),
            "out_sample": _check(cudart.cudaMalloc(hi * c * h * w * 4)),
        }
        for name, ptr in self._dev.items():
            self.context.set_tensor_address(name, int(ptr))
        return self

    def close(self):
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for graph in self._graphs.values():
            cudart.cudaGraphExecDestroy(graph)
        for ptr in getattr(self, "_dev", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
        self._graphs, self._dev, self.stream = {}, {}, None

    def _enqueue(self, batch):
        if self.cuda_graph and batch in self._graphs:
            _check(self._cudart.cudaGraphLaunch(self._graphs[batch], self.stream))
            return
        if not self.context.execute_async_v3(self.stream):
            raise DiffPruneError("TensorRT failed to run the engine (see the TensorRT log above).")
        if self.cuda_graph and batch not in self._graphs:
            # The first run at a shape sets TensorRT's internal state; capture the second.
            cudart = self._cudart
            _check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self.context.execute_async_v3(self.stream)
            graph = _check(cudart.cudaStreamEndCapture(self.stream))
            self._graphs[batch] = _check(cudart.cudaGraphInstantiate(graph, 0))
            cudart.cudaGraphDestroy(graph)

    def run(self, sample, timestep):
        cudart = self._cudart
        b = sample.shape[0]
        self.context.set_input_shape("sample", tuple(sample.shape))
        self.context.set_input_shape("timestep", (b,))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        sample = np.ascontiguousarray(sample)
        _check(cudart.cudaMemcpyAsync(self._dev["sample"], sample.ctypes.data, sample.nbytes, h2d, self.stream))
        _check(cudart.cudaMemcpyAsync(self._dev["timestep"], timestep.ctypes.data, timestep.nbytes, h2d, self.stream))
        self._enqueue(b)
        out = self._host_out[:b]
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._dev["out_sample"], out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return out.copy()
