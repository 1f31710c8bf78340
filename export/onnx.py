"""UNets -> ONNX, validated against torch before anything is written.

Graph contract (what the runtime and TensorRT rely on):
    inputs   sample    float32 (B, C, H, W)   the noisy image x_t
             timestep  float32 (B,)           one timestep per sample (guidance and mixed-t batches)
             [encoder_hidden_states float32 (B, L, D)]    text-conditioned UNets (Stable Diffusion); L the
                                                          pipeline tokenizer's length (CLIP: 77)
             [text_embeds float32 (B, P), time_ids float32 (B, 6)]   SDXL's added conditioning
             [class_labels int64 (B,)]                 class-conditional UNets
    output   out_sample float32 (B, C, H, W)  the model's prediction (epsilon, v or x0)
With step caching (``step_cache=K``, DeepCache, diffprune/sources/deepcache.py) the full graph also outputs
deep_feature (B, C_f, H_f, W_f), the up-block output at the cache branch K blocks deep, and ``shallow/`` beside
model.onnx holds the shallow graph: the same inputs plus deep_feature, output out_sample; model.json's
"step_cache" records them (runtime/formats.py).
B is dynamic; H and W are fixed unless ``dynamic_hw``. fp16 graphs keep float32 I/O and cast inside.
The pixel UNet2DModel is the case without conditioning; the other components of a pipeline (text
encoders, VAE/VQ decoders) go through the same writer (:func:`write_graph`) from export/pipeline.py.

Exporter: torch.export-based (``dynamo=True``) by default. On these UNets both exporters are exact
(max-abs error ~2e-6 vs torch) and equally fast under ONNX Runtime (CIFAR-10 DDPM: 71 vs 73 ms at
batch 1 on 2 CPU cores), but the torch.export graph has half the nodes (788 vs 1638: no Constant/
Identity litter), which keeps TensorRT parsing and graph inspection simple, and the TorchScript
exporter is deprecated upstream. It is slower to export (17 s vs 6 s); ``exporter="torchscript"``
remains as a fallback.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffprune._io import atomic_dir
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import (CACHE_FEATURE, MODEL_JSON, ONNX_FORMAT, ORT_CPU_FILE, SHALLOW_DIR,
                                       read_pruning_json, step_cache_record)

from .graph_io import io_specs
from .validate import validate

TWO_GB = 2 * 1024**3
# torch.export writes scaled_dot_product_attention as one ONNX Attention node from this opset on (below it, as
# MatMul + Softmax + MatMul), which export/attention.py rewrites for ONNX Runtime's CPU FlashAttention.
ATTENTION_OPSET = 23
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
        """The graph, ``model.onnx.data`` when the weights are external, and ``model.ort.onnx`` when there is one."""
        weights = self.model_json.get("weights_file")
        ort_cpu = (self.model_json.get("ort_cpu") or {}).get("file")
        return [self.onnx_path] + ([self.out_dir / weights] if weights else []) + ([self.out_dir / ort_cpu] if ort_cpu else [])

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def unet_input_names(cond) -> list:
    """The UNet graph's inputs for a diffprune.sources.conditioning.Conditioning, in order: the pixel UNet's
    (sample, timestep), then what the UNet is conditioned on."""
    names = ["sample", "timestep"]
    if cond.text_width:
        names.append("encoder_hidden_states")  # (B, L, D)
    if cond.added == "text_time":
        names += ["text_embeds", "time_ids"]  # (B, P), (B, 6): SDXL's added_cond_kwargs
    if cond.num_classes:
        names.append("class_labels")  # (B,) int64
    return names


def _wrapper(unet, cache=None, role: str = "plain"):
    """The UNet as a graph: ``role`` plain (``unet``), or with ``cache`` (a DeepCache of ``unet``) full (outputs
    also the deep feature) or shallow (takes the deep feature as its last input)."""
    import torch

    from diffprune.sources.conditioning import conditioning

    extra = unet_input_names(conditioning(unet))[2:]

    class UNetForExport(torch.nn.Module):
        """Plain tensors in and out: (sample, timestep, *conditioning) -> out_sample, the conditioning
        inputs in the order of :func:`unet_input_names` (none for a pixel UNet)."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, *cond):
            if role == "shallow":
                *cond, cache.store["feature"] = cond  # deep_feature, the graph's last input
            kwargs = dict(zip(extra, cond))
            if "time_ids" in kwargs:  # SDXL takes its pooled text and time ids as one dict
                kwargs["added_cond_kwargs"] = {k: kwargs.pop(k) for k in ("text_embeds", "time_ids")}
            out = self.unet(sample, timestep, **kwargs).sample
            return (out, cache.store.pop("feature")) if role == "full" else out

    model = {"plain": unet, "full": getattr(cache, "full_unet", None), "shallow": getattr(cache, "shallow_unet", None)}
    return UNetForExport(model[role]).eval()


def _has_attention(model) -> bool:
    from diffusers.models.attention_processor import Attention

    return any(isinstance(m, Attention) for m in model.modules())


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


def _dynamic_shapes(module, specs: list) -> dict:
    """torch.export's dynamic_shapes keyed by ``module.forward``'s parameters: one spec per input, the
    rest gathered for a ``*args`` parameter (the UNet wrapper's conditioning inputs)."""
    import inspect

    out, rest = {}, list(specs)
    for name, param in inspect.signature(module.forward).parameters.items():
        if param.kind == param.VAR_POSITIONAL:
            if rest:  # torch.export wants no key for an empty *args
                out[name] = tuple(rest)
            rest = []
        elif rest:
            out[name] = rest.pop(0)
    return out


def _export(wrapper, example: dict, output_names, opset: int, batch, dynamic_hw: bool, exporter: str,
            spatial=("sample", "out_sample")):
    """``wrapper(*example.values())`` -> an ONNX proto with the inputs named as ``example``'s keys and
    outputs ``output_names``. Axis 0 of every input and output is the batch (dynamic); with
    ``dynamic_hw`` so are axes 2 and 3 of the inputs and outputs named in ``spatial``."""
    import torch

    inputs, args = list(example), tuple(example.values())
    names = dict(input_names=inputs, output_names=list(output_names), opset_version=opset)
    if exporter == "dynamo":
        b = torch.export.Dim("batch", min=1, max=max(batch[2], 2))
        specs = []
        for name in inputs:
            dims = {0: b}
            if dynamic_hw and name in spatial:
                dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
            specs.append(dims)
        program = torch.onnx.export(wrapper, args, dynamo=True, verbose=False, external_data=False,
                                    dynamic_shapes=_dynamic_shapes(wrapper, specs), **names)
        program.optimize()
        proto = program.model_proto
    elif exporter == "torchscript":
        axes = {name: {0: "batch"} for name in [*inputs, *output_names]}
        if dynamic_hw:
            for name in spatial:
                if name in axes:
                    axes[name].update({2: "height", 3: "width"})
        buffer = io.BytesIO()
        torch.onnx.export(wrapper, args, buffer, dynamo=False, dynamic_axes=axes, **names)
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

    external = weights == "external" or _over_two_gb(proto)
    onnx.save_model(proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE if external else None, size_threshold=1024)
    return external


def _over_two_gb(proto) -> bool:
    """Whether the graph is too large for one protobuf message (SD-1.5's UNet: 3.4 GB in fp32). Sized from
    the tensors, since protobuf cannot even measure (``ByteSize``) a message over 2 GB."""
    size = sum(len(t.raw_data) or 4 * max(len(t.float_data), 1) for t in proto.graph.initializer)
    return size > TWO_GB - 64 * 1024**2


def check_options(dtype: str, opset: int, batch, weights: str) -> tuple:
    """Refuse bad export options before anything is loaded; returns (min, opt, max) batch."""
    if dtype not in ("fp32", "fp16"):
        raise DiffPruneError(f"dtype {dtype!r} is not supported; allowed: fp32, fp16.")
    if not 13 <= int(opset) <= 23:
        raise DiffPruneError(f"opset {opset} is out of range; allowed: 13..23 (default 18).")
    batch = _check_batches(batch)
    if weights not in WEIGHTS:
        raise DiffPruneError(f"weights {weights!r} is unknown; allowed: {', '.join(WEIGHTS)} (external: tensors in "
                             f"{WEIGHTS_FILE} beside the graph, less memory at load; inline: one file).")
    return batch


def to_onnx(model_or_folder, out_dir, dtype: str = "fp32", opset: int = 18, batch=(1, 8, 64),
            dynamic_hw: bool = False, exporter: str = "dynamo", slim: bool = False, validate_batches=None,
            triton=None, weights: str = "external", overwrite: bool = False,
            fuse_attention: bool = True, step_cache: int = 0) -> ExportResult:
    """Export a UNet (or any model folder / hub id ``diffprune`` can load) to ``out_dir``.

    Writes ``model.onnx`` and ``model.json``; validation (onnx.checker, shape inference, ONNX Runtime
    vs torch at several batch sizes and timesteps) runs first, and a failure leaves nothing behind.
    A conditional UNet's graph also takes its conditioning (:func:`unet_input_names`); a whole
    text-to-image pipeline (text encoders, UNet, VAE decoder) is :func:`diffprune.export.export_pipeline`.
    ``dtype="fp16"`` stores the graph in float16 with normalisation and softmax kept in float32.
    ``triton`` names a Triton model repository to write beside it. ``weights="external"`` (default)
    stores the tensors in ``model.onnx.data``, which runtimes load without a protobuf copy (less peak memory);
    ``"inline"`` keeps one self-contained ``model.onnx``. ``fuse_attention`` (fp32, dynamo exporter, external
    weights, a UNet with attention): export at opset >= 23 and also write ``model.ort.onnx``, the
    graph ONNX Runtime's CPU provider runs, its attention fused (export/attention.py: no (B, heads, S, S) score
    matrices), sharing the weights file. ``step_cache=K`` also writes DeepCache's shallow graph
    (:func:`export_unet`); with fused attention, shallow/ holds its own ``model.ort.onnx`` too.
    """
    from diffprune._io import check_writable
    from diffprune.sources.loader import load_source

    batch = check_options(dtype, opset, batch, weights)
    check_writable(out_dir, overwrite)
    started = time.perf_counter()
    unet, scheduler_config, source = load_source(model_or_folder, device="cpu")
    pruning = None
    if source.get("format") == "diffprune":
        pruning = read_pruning_json(source["source"])
        pruning.pop("widths", None)
    result = export_unet(unet, out_dir, scheduler_config, source, pruning, dtype=dtype, opset=opset, batch=batch,
                         dynamic_hw=dynamic_hw, exporter=exporter, slim=slim, validate_batches=validate_batches,
                         weights=weights, overwrite=overwrite, started=started, fuse_attention=fuse_attention,
                         step_cache=step_cache)
    if triton:
        from .triton import write_repository

        write_repository(triton, result.out_dir, overwrite=overwrite)
    return result


def unet_feeds(cond, size):
    """``feeds(batch, rng)``: random conditioning inputs of a UNet graph (numpy, by name), for validation:
    text embeddings of unit scale, SDXL's time ids as the pipelines give them, labels over all classes."""
    h, w = size

    def feeds(b, rng):
        out = {}
        if cond.text_width:
            out["encoder_hidden_states"] = rng.standard_normal((b, cond.text_tokens, cond.text_width)).astype(np.float32)
        if cond.added == "text_time":
            out["text_embeds"] = rng.standard_normal((b, cond.pooled_width)).astype(np.float32)
            ids = np.array([h * 8, w * 8, 0, 0, h * 8, w * 8], dtype=np.float32)  # (orig, crop, target) at factor 8
            out["time_ids"] = np.tile(ids, (b, 1))  # (B, 6)
        if cond.num_classes:
            out["class_labels"] = rng.integers(0, cond.num_classes, b).astype(np.int64)
        return out

    return feeds


def export_unet(unet, out_dir, scheduler_config: dict, source: dict, pruning=None, dtype: str = "fp32",
                opset: int = 18, batch=(1, 8, 64), dynamic_hw: bool = False, exporter: str = "dynamo",
                slim: bool = False, validate_batches=None, weights: str = "external", overwrite: bool = False,
                started=None, extra: dict | None = None, text_tokens: int | None = None,
                validated: bool = True, fuse_attention: bool = True, step_cache: int = 0) -> ExportResult:
    """Export the in-memory ``unet`` (pixel, class-conditional or text-conditioned) to ``out_dir``;
    ``extra`` joins model.json. ``text_tokens``: the length of ``encoder_hidden_states`` (the pipeline
    tokenizer's; default CLIP's 77). ``fuse_attention``: as :func:`to_onnx`'s. ``validated=False`` skips the
    comparison with torch and the MAC count (graphs that are only timed: diffprune.latency's probes).
    ``step_cache=K`` (K >= 1) also writes the shallow graph of DeepCache at the branch K blocks deep into
    ``out_dir/shallow`` (see the module docstring). :func:`to_onnx` loads a source and calls this."""
    import torch

    from diffprune.sources.conditioning import conditioning
    from diffprune.sources.unet import count_macs_params

    started = started or time.perf_counter()
    lo, opt, hi = batch
    unet = unet.float().eval()
    cfg = unet.config
    cond = conditioning(unet)
    if text_tokens is not None and cond.text_width:
        cond = dataclasses.replace(cond, text_tokens=int(text_tokens))
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    feeds = unet_feeds(cond, size)
    example = {"sample": torch.randn(2, cfg.in_channels, *size), "timestep": torch.tensor([1.0, 500.0]),
               **{k: torch.from_numpy(v) for k, v in feeds(2, np.random.default_rng(0)).items()}}
    cache = shallow = None
    if step_cache:
        from diffprune.sources.deepcache import DeepCache

        cache = DeepCache(unet, step_cache)
    wrapper = _wrapper(unet, cache, "full" if cache else "plain")
    outputs = ["out_sample", CACHE_FEATURE] if cache else ["out_sample"]
    # The CPU kernel is float32 only; an inline export stays one file; a UNet without attention keeps its graph.
    # With step caching the full graph (two outputs) and the shallow graph each get their fused copy, each
    # validated against torch on every output like the portable graphs.
    ort_cpu = (fuse_attention and dtype == "fp32" and exporter == "dynamo" and weights == "external"
               and _has_attention(unet))
    if ort_cpu:
        opset = max(int(opset), ATTENTION_OPSET)
    with torch.no_grad(), _quiet_exporter():
        proto = _export(wrapper, example, outputs, opset, (lo, opt, hi), dynamic_hw, exporter,
                        spatial=("sample", *outputs))
    macs, params = count_macs_params(unet, text_tokens=cond.text_tokens) if validated else (None, None)
    steps = scheduler_config.get("num_train_timesteps", 1000)

    def check(path, batches):
        if not validated:
            return {"skipped": "a timing probe: not compared with torch"}
        return validate(path, wrapper, dtype, batches, steps, conditioning=feeds if cond.kind != "none" else None)

    if cache:
        shallow = _shallow_graph(unet, cache, wrapper, example, feeds, cond, dtype, opset, batch, dynamic_hw,
                                 exporter, steps)
        extra = {**(extra or {}), "step_cache": step_cache_record(step_cache, shallow["feature_shape"])}

    meta = {
        "sample_size": list(size),
        "in_channels": cfg.in_channels,
        "dynamic_hw": dynamic_hw,
        **({"conditioning": cond.to_dict()} if cond.kind != "none" else {}),
        "scheduler": scheduler_config,
        "source": {**source, "weights_sha256": weights_sha256(unet)},
        "params": params,
        "macs": macs,
        "pruning": pruning,
        **(extra or {}),
    }
    inside = None
    if shallow:
        def inside(tmp):  # the shallow graph inside the export's folder, validated before either is written
            shallow_meta = {**meta, "macs": shallow["macs"], "step_cache": {**meta["step_cache"], "role": "shallow"}}
            write_graph(shallow["proto"], tmp / SHALLOW_DIR, shallow["check"], shallow_meta, dtype=dtype, batch=batch,
                        opset=opset, exporter=exporter, slim=slim, validate_batches=validate_batches, weights=weights,
                        ort_cpu=ort_cpu)
    return write_graph(proto, out_dir, check, meta, dtype=dtype, batch=batch, opset=opset, exporter=exporter,
                       slim=slim, validate_batches=validate_batches, weights=weights, overwrite=overwrite,
                       started=started, ort_cpu=ort_cpu, inside=inside)


def _shallow_graph(unet, cache, full_wrapper, example: dict, feeds, cond, dtype, opset, batch, dynamic_hw,
                   exporter, steps) -> dict:
    """DeepCache's shallow graph: ``{proto, check, macs, feature_shape}``; it takes the full graph's deep
    feature as its last input, and is validated against torch on features of unit scale."""
    import torch

    from diffprune.sources.unet import count_macs_params

    from .validate import validate_graph

    shallow = _wrapper(unet, cache, "shallow")
    with torch.no_grad():
        _, feature = full_wrapper(*example.values())  # (2, C_f, H_f, W_f)
    with torch.no_grad(), _quiet_exporter():
        proto = _export(shallow, {**example, CACHE_FEATURE: feature}, ["out_sample"], opset, batch, dynamic_hw,
                        exporter, spatial=("sample", CACHE_FEATURE, "out_sample"))
    cache.store["feature"] = feature[:1]  # what the shallow copy reads while its MACs are counted at batch 1
    try:
        macs, _ = count_macs_params(cache.shallow_unet, text_tokens=cond.text_tokens)
    finally:
        cache.store.clear()

    def make_inputs(b, rng, session):
        sample = rng.standard_normal((b, *example["sample"].shape[1:])).astype(np.float32)
        timestep = np.linspace(0, steps - 1, b).round().astype(np.float32) if b > 1 else \
            rng.integers(0, steps, 1).astype(np.float32)
        extra = feeds(b, rng) if cond.kind != "none" else {}
        deep = rng.standard_normal((b, *feature.shape[1:])).astype(np.float32)
        return {"sample": sample, "timestep": timestep, **extra, CACHE_FEATURE: deep}

    def check(path, batches):
        return validate_graph(path, shallow, make_inputs, dtype, batches, what="shallow UNet graph (step caching)",
                              describe=lambda f: {"timesteps": [int(t) for t in f["timestep"][:4]]})

    return {"proto": proto, "check": check, "macs": macs, "feature_shape": ["batch", *feature.shape[1:]]}


def write_graph(proto, out_dir, check, meta: dict, dtype: str, batch, opset: int, exporter: str,
                slim: bool = False, validate_batches=None, weights: str = "external", overwrite: bool = False,
                started=None, keep_fp32=None, ort_cpu: bool = False, inside=None) -> ExportResult:
    """Convert (fp16, slim), save and validate ``proto`` into ``out_dir`` (atomically), with model.json
    = the common fields + ``meta``. ``check(onnx_path, batches)`` validates against torch and returns the
    report (it raises on a mismatch, and then nothing is written). ``keep_fp32`` adds ops to keep in
    float32 in an fp16 graph. ``ort_cpu``: also write ``model.ort.onnx`` (:func:`write_ort_cpu_graph`), validated
    the same way, when the graph has attention to fuse; model.json's "ort_cpu" describes it (else null).
    ``inside(tmp)`` writes more into the folder before it is renamed into place (the shallow graph of step caching)."""
    from diffprune.sources.unet import versions

    started = started or time.perf_counter()
    lo, opt, hi = batch
    if dtype == "fp16":
        from .fp16 import to_fp16

        proto = to_fp16(proto, keep=keep_fp32)
    slim_report = None
    if slim:
        from .slim import slim_graph

        proto, slim_report = slim_graph(proto)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        onnx_path = tmp / ONNX_FILE
        external = _save(proto, onnx_path, weights)
        # Several batch sizes, capped at 8 so validation stays seconds on a CPU.
        batches = validate_batches or sorted({lo, min(max(lo, 2), hi), min(opt, 8), hi if hi <= 8 else lo})
        report = check(onnx_path, batches)
        ort_graph = write_ort_cpu_graph(onnx_path, tmp / ORT_CPU_FILE, check, batches) if ort_cpu else None
        if inside is not None:
            inside(tmp)
        meta = {
            "format": ONNX_FORMAT,
            "file": ONNX_FILE,
            "weights_file": WEIGHTS_FILE if external else None,
            **io_specs(proto),
            "dtype": dtype,
            "io_dtype": "float32",
            "batch": {"min": lo, "opt": opt, "max": hi},
            "opset": opset,
            "exporter": exporter,
            **meta,
            "validation": report,
            "ort_cpu": ort_graph,
            "slim": slim_report,
            "versions": {**versions(), **_onnx_versions()},
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=1, default=str))
    out_dir = Path(out_dir)
    return ExportResult(out_dir, out_dir / ONNX_FILE, meta, time.perf_counter() - started)


def write_ort_cpu_graph(onnx_path: Path, out_path: Path, check, batches) -> dict | None:
    """Write beside ``onnx_path`` the graph ONNX Runtime's CPU provider runs (export/attention.py: attention as
    com.microsoft.MultiHeadAttention, FlashAttention on CPU), reading the same weights file, and validate it with
    ``check``. Returns model.json's "ort_cpu" record, or None (nothing written) when there is nothing to rewrite."""
    import onnx

    from .attention import ort_cpu_graph

    graph, report = ort_cpu_graph(onnx.load(str(onnx_path), load_external_data=False))
    if not (report["fused"] or report["group_norms_as_instance_norm"]):
        return None
    onnx.save_model(graph, str(out_path))  # external tensors keep their references to model.onnx.data
    del graph
    return {"file": out_path.name, "backends": ["ort-cpu"], **report, "validation": check(out_path, batches)}


def _onnx_versions() -> dict:
    import onnx

    out = {"onnx": onnx.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out
