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
        # One device buffer per input and output, sized for the profile's largest shapes: set every input to
        # its maximum, then ask the context for the outputs' shapes (a UNet, a text encoder, a decoder alike).
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            self.context.set_input_shape(name, tuple(self.engine.get_tensor_profile_shape(name, 0)[2]))
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._max_shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in names}
        self._inputs = inputs
        self._output_names = [n for n in names if n not in inputs]
        self._host_out = {n: np.empty(self._max_shapes[n], self._dtypes[n]) for n in self._output_names}
        self._dev = {n: _check(cudart.cudaMalloc(max(1, int(np.prod(self._max_shapes[n])) * self._dtypes[n].itemsize)))
                     for n in names}
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

    def _enqueue(self, key):
        if self.cuda_graph and key in self._graphs:
            _check(self._cudart.cudaGraphLaunch(self._graphs[key], self.stream))
            return
        if not self.context.execute_async_v3(self.stream):
            raise DiffPruneError("TensorRT failed to run the engine (see the TensorRT log above).")
        if self.cuda_graph and key not in self._graphs:
            # The first run at a shape sets TensorRT's internal state; capture the second.
            cudart = self._cudart
            _check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self.context.execute_async_v3(self.stream)
            graph = _check(cudart.cudaStreamEndCapture(self.stream))
            self._graphs[key] = _check(cudart.cudaGraphInstantiate(graph, 0))
            cudart.cudaGraphDestroy(graph)

    def run_feeds(self, feeds: dict) -> dict:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        feeds = {n: np.ascontiguousarray(v, dtype=self._dtypes[n]) for n, v in feeds.items()}  # kept alive to the sync
        for name in self._inputs:
            self.context.set_input_shape(name, tuple(feeds[name].shape))
            _check(cudart.cudaMemcpyAsync(self._dev[name], feeds[name].ctypes.data, feeds[name].nbytes, h2d, self.stream))
        self._enqueue(tuple(feeds[n].shape for n in self._inputs))
        outs = {}
        for name in self._output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = self._host_out[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._dev[name], out.nbytes, d2h, self.stream))
            outs[name] = out
        _check(cudart.cudaStreamSynchronize(self.stream))
        return {n: o.copy() for n, o in outs.items()}
