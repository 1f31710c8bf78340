"""Runners: one UNet forward on a backend. Backends are imported lazily, inside their own file."""

from pathlib import Path

from ..artifact import describe
from ..errors import DiffPruneError

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "openvino")


def auto_backend() -> str:
    """What ``"auto"`` means where no artifact is at hand (``--help``): openvino where installed, else ort-cpu.

    With an artifact, ``auto`` is measured instead (:func:`resolve_backend`, diffprune.runtime.auto): the
    fastest installed backend and precision whose images agree with float32's on that artifact and host."""
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "ort-cpu"


def resolve_backend(text: str, artifact=None, threads: int | None = None, log=None) -> str:
    """``"auto"`` -> the backend measured fastest for ``artifact`` among those agreeing with float32
    (diffprune.runtime.auto.auto_choice: cached per artifact and host; ``log`` gets its one line of times), or
    :func:`auto_backend` without an artifact; any other spec is checked and returned as given."""
    if text == "auto":
        if artifact is None:
            return auto_backend()
        return choose_auto(artifact, threads=threads, log=log)["chosen"]
    parse_backend(text)
    return text


def choose_auto(artifact, threads: int | None = None, **options) -> dict:
    """What ``auto`` is for ``artifact`` here: :func:`diffprune.runtime.auto.auto_choice` (cached, else measured
    on this package's runners); ``options``: batch, steps, tolerance, refresh, specs, log."""
    from ..auto import auto_choice

    return auto_choice(artifact, threads=threads, open_runner=open_runner, **options)


def parse_backend(text: str) -> tuple:
    """A backend spec -> ``(name, device, precision)``.

    ``"ort-cpu"`` -> ``("ort-cpu", None, None)``; ``"openvino"`` -> ``("openvino", None, None)`` (CPU, OpenVINO's
    default precision);
    ``"openvino:GPU@f16"`` -> ``("openvino", "GPU", "f16")``. Only openvino takes a device after ``:`` (GPU,
    NPU, AUTO, ... where present) and a compute precision after ``@`` (auto, f32, bf16, f16).
    """
    from .openvino import PRECISIONS  # the module imports openvino lazily, so this stays cheap

    spec, at, precision = str(text).partition("@")
    name, colon, device = spec.partition(":")
    if name not in BACKENDS or ((device or precision) and name != "openvino") or (colon and not device) or (
            at and precision not in PRECISIONS):
        raise DiffPruneError(
            f"Backend {text!r} is unknown; allowed: {', '.join(BACKENDS)}. openvino also takes a device and a "
            f"precision, openvino[:DEVICE][@PRECISION]: DEVICE as OpenVINO names it (CPU by default, GPU, NPU, AUTO), "
            f"PRECISION one of {', '.join(PRECISIONS)} (default auto, OpenVINO's choice), e.g. openvino@f32 or openvino:GPU@f16."
        )
    return name, device or None, precision or None


def check_available(spec: str) -> str:
    """Raise :class:`DiffPruneError` unless backend ``spec`` can run here (its package, provider or device
    present); return the resolved spec. Cheap enough to call for every backend before any work starts."""
    import importlib.util

    spec = resolve_backend(spec)
    name, device, _ = parse_backend(spec)
    if name.startswith("ort"):
        from .onnxruntime import PROVIDERS, import_onnxruntime

        wanted = PROVIDERS[{"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[name]][0]
        have = import_onnxruntime().get_available_providers()
        if wanted not in have:
            raise DiffPruneError(
                f"Backend {spec} needs ONNX Runtime's {wanted}, which this install lacks (it has {', '.join(have)}). "
                "Install onnxruntime-gpu (pip install 'diffprune[gpu]') on a machine with an NVIDIA GPU, or drop "
                f"{spec} from the backends.")
    elif name == "openvino":
        from .openvino import import_openvino

        devices = import_openvino().Core().available_devices
        wanted = (device or "CPU").upper()
        if wanted not in ("AUTO", "MULTI", "HETERO") and not any(d.split(".")[0] == wanted.split(".")[0] for d in devices):
            raise DiffPruneError(f"Backend {spec}: OpenVINO device {wanted} is not available here; available: "
                                 f"{', '.join(devices) or 'none'}. Use one of those, or drop {spec} from the backends.")
    elif name == "trt" and importlib.util.find_spec("tensorrt") is None:
        raise DiffPruneError("Backend trt needs the tensorrt package and an NVIDIA GPU: pip install "
                             "'diffprune[gpu]' there, or drop trt from the backends.")
    return spec


def incompatibility(kind: str, backend: str, folder="the artifact") -> str | None:
    """Why ``backend`` cannot run an artifact of ``kind`` ("onnx", "openvino" or "tensorrt", as
    :func:`diffprune.runtime.artifact.describe` says) in ``folder``, or None when it can: TensorRT engines
    run on trt only, OpenVINO IR folders on openvino only, ONNX exports on every backend but trt."""
    name = str(backend).split(":")[0].split("@")[0]
    if name == "trt" and kind != "tensorrt":
        return (f"Backend trt needs a TensorRT engine folder (engine.json), but {str(folder)!r} is an ONNX export. "
                "Build one with `diffprune build`, or use --backend ort-cpu / ort-cuda / ort-trt.")
    if kind == "openvino" and name != "openvino":
        return (f"{str(folder)!r} is an OpenVINO IR (from `diffprune quantize`), which only OpenVINO runs; use "
                f"--backend openvino (or auto), not {name}, or run the ONNX export it was made from.")
    if kind == "tensorrt" and name != "trt":
        return f"Backend {name} runs ONNX exports, but {str(folder)!r} is a TensorRT engine; use --backend trt."
    return None


def open_runner(artifact, backend: str = "ort-cpu", threads: int | None = None, cuda_graph: bool = False,
                batch: int | None = None):
    """A runner for ``artifact`` (an export folder with model.json or an engine folder with engine.json).

    ``backend``: ort-cpu, ort-cuda, ort-trt (ONNX Runtime execution providers), trt (native engine),
    openvino[:DEVICE][@PRECISION] (OpenVINO: CPU and its default precision; see ``parse_backend``), or auto
    (measured: the fastest here whose images agree with float32's; the choice is ``runner.auto``, see
    diffprune.runtime.auto).
    ``batch`` pins the session to one batch size, which lets the backend fold the graph's shape
    arithmetic (1-3 % faster on the CIFAR-10 UNet on CPU with ONNX Runtime); other batch sizes are then
    refused.
    Use it as a context manager: ``with open_runner(path) as run: out = run(sample, timestep)``.
    """
    auto = None
    if backend == "auto":
        auto = choose_auto(artifact, threads=threads)
        backend = auto["chosen"]
    runner = _open_runner(artifact, backend, threads, cuda_graph, batch)
    runner.auto = auto
    return runner


def _open_runner(artifact, backend, threads, cuda_graph, batch):
    opened_with = {"backend": backend, "threads": threads, "cuda_graph": cuda_graph, "batch": batch}
    backend, device, precision = parse_backend(resolve_backend(backend))
    kind, folder, meta = describe(Path(artifact))
    why = incompatibility(kind, backend, folder)
    if why:
        raise DiffPruneError(why)
    if backend == "trt":
        from .tensorrt import TensorRTRunner

        runner = TensorRTRunner(folder, meta, cuda_graph=cuda_graph)
    elif backend == "openvino":
        from .openvino import OpenVINORunner

        runner = OpenVINORunner(folder, meta, device=device or "CPU", threads=threads, batch=batch,
                                precision=precision or "auto")
    else:
        from .onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(folder, meta, threads=threads, batch=batch,
                                   device={"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[backend])
    runner.opened_with = opened_with  # what open_shallow opens the step-caching graph with
    return runner


def open_shallow(runner, interval: int):
    """The shallow UNet graph of step caching (DeepCache) beside ``runner``'s export, opened on the same backend
    with the same settings, for ``interval`` (None at interval 1, which needs none). A clear error when the export
    has no shallow graph (runtime/formats.py's ``read_step_cache``)."""
    from ..formats import read_step_cache

    record = read_step_cache(runner.folder, runner.meta, interval)
    if record is None:
        return None
    shallow = open_runner(record["shallow"], **getattr(runner, "opened_with", {"backend": "ort-cpu"}))
    if getattr(runner, "spinning", None) is not None:  # ONNX Runtime: two sessions in alternation must not spin
        shallow.spinning = False
        if runner.spinning:
            runner.spinning = False
            if runner.session is not None:  # reopened without spinning threads
                runner.close()
                runner.open()
    return shallow.open()


__all__ = ["BACKENDS", "auto_backend", "check_available", "choose_auto", "incompatibility", "open_runner", "open_shallow",
           "parse_backend", "resolve_backend"]
