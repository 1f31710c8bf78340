"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers; IO binding on GPU."""

from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..errors import DiffPruneError
from ..formats import graph_file
from .base import Runner

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def trt_cache_dir() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps engines and timing caches: ``$DIFFPRUNE_CACHE/ort-trt``,
    default ``~/.cache/diffprune/ort-trt``. Its file names hash the graph and GPU, so models can share it."""
    return cache_dir("ort-trt")


def trt_provider_options(meta: dict, batch: int | None = None) -> dict:
    """TensorRT execution-provider options for an export described by ``meta`` (its model.json).

    Building a UNet's engines takes minutes, so engines and the timing cache are kept on disk and
    reused by later sessions. The optimisation profile is the export's batch range (min/opt/max from
    model.json) at its sample size; without it the provider rebuilds each time a larger batch arrives.
    A pinned ``batch`` makes every input static, and then no profile is given. Precision stays as
    exported: an fp16 export runs fp16.
    """
    cache = str(trt_cache_dir())
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache}
    inputs = meta.get("inputs", [])
    batch_dims = {d for i in inputs for d in i["shape"][:1] if isinstance(d, str)}
    only_batch_dynamic = not any(isinstance(d, str) for i in inputs for d in i["shape"][1:])
    if inputs and batch_dims and only_batch_dynamic and batch is None:
        for key in ("min", "opt", "max"):
            n = meta["batch"][key]
            options[f"trt_profile_{key}_shapes"] = ",".join(
                f"{i['name']}:" + "x".join(str(n if d in batch_dims else d) for d in i["shape"]) for i in inputs)
    return options


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DiffPruneError(
            "The ONNX Runtime backend needs onnxruntime: pip install 'diffprune[cpu]' (CPU) or "
            "'diffprune[gpu]' (onnxruntime-gpu)."
        ) from None
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    """``OnnxRuntimeRunner(folder, device="cpu"|"cuda"|"tensorrt", threads=None)``.

    ``threads`` sets intra-op threads (default: one per physical core, ONNX Runtime's choice); inter-op
    parallelism stays at 1 because a UNet is one long chain of ops. ``batch`` fixes the graph's batch
    dimension for this session (ONNX Runtime's free-dimension override), so shape arithmetic folds
    away at load; the runner then accepts that batch size only.
    """

    def __init__(self, folder, meta: dict, device: str = "cpu", threads: int | None = None, batch: int | None = None):
        super().__init__(folder, meta)
        self.pin_batch(batch)
        if device not in PROVIDERS:
            raise DiffPruneError(f"ONNX Runtime device {device!r} is unknown; allowed: {', '.join(PROVIDERS)}.")
        self.device = device
        self.threads = threads
        self.backend = f"ort-{device}" if device != "tensorrt" else "ort-trt"
        self.session = None
        # Idle intra-op threads spin for a while after each run. Alone that saves a few %; beside a second session
        # (step caching's shallow graph, called in alternation) each session's spinning threads take the cores the
        # other one runs on: digits DDPM at batch 8, one full + two shallow calls took 81 ms spinning, 40 ms not
        # (54 ms as the sum of the calls timed alone). runners.open_shallow turns it off on both.
        self.spinning = True

    def open(self):
        ort = import_onnxruntime()
        wanted = PROVIDERS[self.device][0]
        if wanted not in ort.get_available_providers():
            raise DiffPruneError(
                f"ONNX Runtime here has no {wanted} (available: {', '.join(ort.get_available_providers())}). "
                "For GPUs install onnxruntime-gpu (pip install 'diffprune[gpu]'), or use the cpu backend."
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if self.device == "cpu":
            # Without the memory pattern the CPU arena holds one set of activations instead of the first
            # run's plus the planned block: peak RSS at batch 8 falls 371 -> 290 MiB (dense CIFAR-10 UNet)
            # at the same speed (benchmarks/ort_cpu_options.py). The arena itself stays: without it
            # every call is 13-16 % slower.
            options.enable_mem_pattern = False
        if self.threads:
            options.intra_op_num_threads = self.threads
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        batch_dim = next((d for d in self.meta.get("inputs", [{}])[0].get("shape", []) if isinstance(d, str)), None)
        if self.fixed_batch is not None and batch_dim:
            options.add_free_dimension_override_by_name(batch_dim, int(self.fixed_batch))
        options.log_severity_level = 3
        from ..artifact import check_onnx_files

        check_onnx_files(self.folder, self.meta)
        # ort-cpu reads the export's graph with attention fused for its CPU kernel where there is one (formats.graph_file)
        path = self.graph_path = self.folder / graph_file(self.meta, self.backend)
        providers = PROVIDERS[self.device]
        if self.device == "tensorrt":
            cache_dir("ort-trt", create=True)
            providers = [("TensorrtExecutionProvider", trt_provider_options(self.meta, self.fixed_batch)), *providers[1:]]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT's own exception types (InvalidProtobuf, NoSuchFile, Fail, ...)
            raise DiffPruneError(
                f"ONNX Runtime cannot load {str(path)!r}: {str(e).splitlines()[0]} The file is missing, corrupt "
                "or from another export; re-run `diffprune export`."
            ) from None
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        declared = {i["name"]: i for i in self.meta.get("inputs", [])}
        if self.fixed_batch is not None:  # the session reports the pinned size where model.json names the dim
            declared = {n: {**d, "shape": [self.fixed_batch if dim == batch_dim else dim for dim in d["shape"]]}
                        for n, d in declared.items()}
        if set(graph_inputs) != set(declared) or any(
            list(graph_inputs[n].shape) != list(declared[n]["shape"]) for n in declared
        ):
            raise DiffPruneError(
                f"model.json in {str(self.folder)!r} does not match its graph: it declares inputs "
                f"{[(d['name'], d['shape']) for d in declared.values()]}, the graph has "
                f"{[(i.name, list(i.shape)) for i in graph_inputs.values()]}. Re-run `diffprune export`."
            )
        self._binding = self.session.io_binding() if self.device != "cpu" else None
        return self

    def close(self):
        self.session = None

    def _run_options(self):
        """ONNX Runtime's run options for a call: none, or (``release_after_call`` on the CPU) the arena shrunk
        back after the call."""
        if not self.release_after_call or self.device != "cpu":
            return None
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options

    def run(self, sample, timestep):
        if self._binding is None:
            return self.session.run(["out_sample"], {"sample": sample, "timestep": timestep}, self._run_options())[0]
        return self.run_feeds({"sample": sample, "timestep": timestep})["out_sample"]

    def run_feeds(self, feeds: dict) -> dict:
        names = [o.name for o in self.session.get_outputs()]
        if self._binding is None:
            return dict(zip(names, self.session.run(names, feeds, self._run_options())))
        # GPU: bind inputs from host once per call and let ORT allocate the outputs on the device,
        # copying them back in one transfer (no intermediate host buffers per op).
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))
