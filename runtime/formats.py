"""diffprune's file formats in one place: each JSON file an artifact carries, its name, its format
string, and the one reader that checks it.

Every writer takes the file name and format string from here, and every reader (the runtime, export/,
diffprune/) calls the reader here, so the two sides cannot drift apart (as transformers'
``PretrainedConfig`` owns config.json).

    file           format string              written by                        says
    model.json     diffprune.onnx/1           export/onnx.py (write_graph)      an ONNX export: graph inputs and
                                                                                outputs, batch range, source; "ort_cpu":
                                                                                the graph ort-cpu reads (graph_file)
                   diffprune.openvino/1       export/openvino_int8.py           an OpenVINO IR folder (INT8)
    engine.json    diffprune.tensorrt/1       export/tensorrt.py                a TensorRT engine, with the
                                                                                export's model.json under "model"
    pipeline.json  diffprune.pipeline/1       export/pipeline.py (tensorrt.py   a pipeline export: kind, components,
                                              adds "engines")                   scheduler, guidance, latents
    deploy.json    diffprune.deploy/1         diffprune/selection/report.py     one deployment configuration
    pruning.json   diffprune.pruned-unet/1    diffprune/sources/checkpoint.py   a pruned UNet's layer widths and
                                                                                what made it
                   diffprune.pruned-decoder/1 diffprune/sources/vae.py          the same for a pipeline's vae/ or
                                                                                vqvae/ whose decoder is pruned
    (any name)     diffprune.latency-table/1  diffprune/latency/profile.py      a UNet's call time as a function of
                                                                                its group widths, on one backend
    <key>.json     diffprune.auto-choice/1    runtime/auto.py (in the cache     what ``--backend auto`` measured and
                   (cache folder "auto")      folder, not in an artifact)       chose for one artifact on one host

Also owned here: the pipeline kinds and the components each needs, which runtime scheduler runs
each diffusers scheduler class (and the named variants, euler-karras ...), and the names of step caching's
records (model.json "step_cache": the full graph's deep_feature output and the shallow/ graph beside it).

Each reader raises one :class:`DiffPruneError` naming the file when it is missing, is not JSON, carries
another format string, or lacks what the runtime reads. model.json, engine.json and pruning.json
written without a format string (by hand, as tests do) are read; one that names another format is
refused. Torch-free: the standard library and runtime/errors.py only.
"""

import json
from pathlib import Path

from .errors import DiffPruneError

# -- file names ---------------------------------------------------------------------------------------
MODEL_JSON = "model.json"
ENGINE_JSON = "engine.json"
PIPELINE_JSON = "pipeline.json"
DEPLOY_JSON = "deploy.json"
PRUNING_JSON = "pruning.json"
# The graph ONNX Runtime's CPU provider reads, beside model.onnx and sharing its weights file: attention fused
# into com.microsoft.MultiHeadAttention (FlashAttention on CPU); model.json's "ort_cpu" names it (export/attention.py).
ORT_CPU_FILE = "model.ort.onnx"

# -- format strings -----------------------------------------------------------------------------------
ONNX_FORMAT = "diffprune.onnx/1"
OPENVINO_FORMAT = "diffprune.openvino/1"
TENSORRT_FORMAT = "diffprune.tensorrt/1"
PIPELINE_FORMAT = "diffprune.pipeline/1"
DEPLOY_FORMAT = "diffprune.deploy/1"
PRUNED_UNET_FORMAT = "diffprune.pruned-unet/1"
PRUNED_DECODER_FORMAT = "diffprune.pruned-decoder/1"  # an autoencoder (vae/, vqvae/) whose decoder is pruned
LATENCY_TABLE_FORMAT = "diffprune.latency-table/1"
AUTO_FORMAT = "diffprune.auto-choice/1"
MODEL_FORMATS = (ONNX_FORMAT, OPENVINO_FORMAT)  # what a model.json may say

# -- pipelines ----------------------------------------------------------------------------------------
# text-to-image-pixel: a text-conditioned UNet that denoises pixels (builtin:digits-text): a StableDiffusionPipeline
# folder without vae/; its images are the UNet's samples, clamped, as the pixel kind's.
KINDS = ("text-to-image", "text-to-image-xl", "text-to-image-pixel", "class-conditional", "latent", "pixel")
TEXT_KINDS = ("text-to-image", "text-to-image-xl", "text-to-image-pixel")  # prompts, and guidance over [uncond; cond]
# The components each kind needs; a decoder is "vae_decoder" or "vq_decoder".
NEEDS = {"text-to-image": ("text_encoder", "unet", "decoder"),
         "text-to-image-pixel": ("text_encoder", "unet"),
         "text-to-image-xl": ("text_encoder", "text_encoder_2", "unet", "decoder"),
         "class-conditional": ("unet",), "latent": ("unet", "decoder"), "pixel": ("unet",)}

# -- schedulers ---------------------------------------------------------------------------------------
# diffusers scheduler classes (a scheduler config's _class_name) -> the runtime's scheduler of the same maths
SCHEDULER_CLASSES = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "DPMSolverMultistepScheduler": "dpm-solver++",
                     "EulerDiscreteScheduler": "euler"}
DIFFUSERS_SCHEDULERS = {name: cls for cls, name in SCHEDULER_CLASSES.items()}  # and back
# Named variants: a runtime scheduler with settings of its diffusers config. "-karras" is Karras et al.'s
# (2022, Eq. 5, rho = 7) sigmas, diffusers' use_karras_sigmas=True ("DPM++ 2M Karras" in SD front ends).
SCHEDULER_VARIANTS = {"euler-karras": ("euler", {"use_karras_sigmas": True}),
                      "dpm-solver++-karras": ("dpm-solver++", {"use_karras_sigmas": True})}

# -- step caching (DeepCache) ----------------------------------------------------------------------------
# A UNet export with step caching: the full graph also outputs CACHE_FEATURE, and SHALLOW_DIR inside its folder
# holds the shallow graph that takes it; model.json's "step_cache" records both (``read_step_cache``).
CACHE_FEATURE = "deep_feature"
SHALLOW_DIR = "shallow"

# -- deploy.json --------------------------------------------------------------------------------------
DEPLOY_FIELDS = {"artifact": str, "backend": str, "scheduler": str, "steps": int, "batch": int}


def read_json(path, remedy: str = "re-create the artifact",
              missing: str = "give a folder written by `diffprune export` or `diffprune build`"):
    """A JSON file diffprune wrote; a clear error when it is missing (ending with ``missing``) or not JSON
    (ending with ``remedy``). The one JSON decoder of the readers below."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffPruneError(f"{str(path)!r} is missing; {missing}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffPruneError(f"{str(path)!r} is not valid JSON ({e}); {remedy}.") from None


def _file(path, name: str) -> Path:
    """``path`` itself when it is a JSON file, else ``name`` beside the file ``path`` (model.onnx, say) or
    inside the folder ``path``."""
    path = Path(str(path))
    if path.is_file():
        return path if path.suffix == ".json" else path.parent / name
    return path / name


def _check_format(meta: dict, file: Path, allowed: tuple, remedy: str) -> None:
    """A format string, when there is one, must be one of ``allowed``."""
    found = meta.get("format")
    if found is not None and found not in allowed:
        raise DiffPruneError(f"{str(file)!r} has format {found!r}; a {file.name} is {' or '.join(map(repr, allowed))}. "
                             f"It was written by another tool or another version of diffprune; {remedy}.")


# -- model.json and engine.json -----------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_dim(v) -> bool:
    return (_is_int(v) and v > 0) or (isinstance(v, str) and bool(v))


# What the runtime reads from model.json (engine.json keeps the same under "model"): field -> (check, what it is).
SPEC_FIELDS = {
    "batch": (lambda v: isinstance(v, dict), "an object {min, opt, max}"),
    "in_channels": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "sample_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(d) and d > 0 for d in v),
                    "[height, width], positive integers"),
    "inputs": (lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("shape"), list)
        and all(_is_dim(d) for d in i["shape"]) for i in v), "a list of {name, shape}"),
}
BATCH_FIELDS = {key: (lambda v: _is_int(v) and v > 0, "a positive integer") for key in ("min", "max")}
# A UNet (its first input ``sample``) also describes its sample; text encoders and decoders need not.
UNET_FIELDS = ("in_channels", "sample_size")


def check_fields(meta, fields: dict, path, prefix: str = "") -> None:
    """One clear error naming every missing or ill-typed field, instead of a KeyError later."""
    if not isinstance(meta, dict):
        problems = [f"{prefix.rstrip('.') or 'the top level'} is not an object"]
    else:
        problems = [f"{prefix}{key} ({'missing' if key not in meta else 'got ' + repr(meta[key])[:40]}; expected {what})"
                    for key, (ok, what) in fields.items() if key not in meta or not ok(meta[key])]
    if problems:
        raise DiffPruneError(
            f"{str(path)!r} is not a valid diffprune artifact description: {'; '.join(problems)}. It was written by "
            "another tool or edited by hand; re-create the artifact with `diffprune export` (or `diffprune build`)."
        )


def check_spec(meta, path, prefix: str = "") -> None:
    """Check model.json (or engine.json's "model") against what the runners read."""
    takes_sample = isinstance(meta, dict) and isinstance(meta.get("inputs"), list) and any(
        isinstance(i, dict) and i.get("name") == "sample" for i in meta["inputs"])
    fields = SPEC_FIELDS if takes_sample or not isinstance(meta, dict) or "inputs" not in meta else {
        k: v for k, v in SPEC_FIELDS.items() if k not in UNET_FIELDS}
    check_fields(meta, fields, path, prefix)
    check_fields(meta["batch"], BATCH_FIELDS, path, prefix + "batch.")
    if meta["batch"]["min"] > meta["batch"]["max"]:
        raise DiffPruneError(f"{str(path)!r}: {prefix}batch.min {meta['batch']['min']} is above batch.max "
                             f"{meta['batch']['max']}; re-create the artifact with `diffprune export`.")


def graph_file(meta: dict, backend: str) -> str:
    """The graph file of an ONNX export (its model.json ``meta``) that ``backend`` runs: model.json's "ort_cpu"
    file for ort-cpu when the export has one (attention fused for ONNX Runtime's CPU provider), else "file"."""
    ort_cpu = meta.get("ort_cpu")
    if backend == "ort-cpu" and isinstance(ort_cpu, dict) and isinstance(ort_cpu.get("file"), str):
        return ort_cpu["file"]
    return meta.get("file", "model.onnx")


def read_model_json(path) -> dict:
    """model.json of an ONNX export or OpenVINO IR folder (``path``: the folder, or the file), checked
    against what the runners read (:func:`check_spec`)."""
    file = _file(path, MODEL_JSON)
    if not file.is_file():
        raise DiffPruneError(f"{str(file.parent)!r} holds no {MODEL_JSON}; give a folder written by `diffprune export`.")
    meta = read_json(file, "re-run `diffprune export`")
    if isinstance(meta, dict):
        _check_format(meta, file, MODEL_FORMATS, "re-run `diffprune export`")
    check_spec(meta, file)
    return meta


def read_engine_json(path) -> dict:
    """engine.json of a TensorRT engine folder (``path``: the folder, or the file): the export's model.json
    under "model" checked as :func:`read_model_json` checks it, and the profile's batch range."""
    file = _file(path, ENGINE_JSON)
    if not file.is_file():
        raise DiffPruneError(f"{str(file.parent)!r} holds no {ENGINE_JSON}; give a folder written by `diffprune build`.")
    meta = read_json(file, "re-run `diffprune build`")
    if isinstance(meta, dict):
        _check_format(meta, file, (TENSORRT_FORMAT,), "re-run `diffprune build`")
    check_spec(meta.get("model") if isinstance(meta, dict) else None, file, "model.")
    check_fields(meta.get("profile", {}).get("batch") if isinstance(meta.get("profile"), dict) else None,
                 BATCH_FIELDS, file, "profile.batch.")
    return meta


# -- pipeline.json ------------------------------------------------------------------------------------

def is_pipeline(path) -> bool:
    """Whether ``path`` is a pipeline export (a folder holding pipeline.json)."""
    return (Path(str(path)) / PIPELINE_JSON).is_file()


def read_pipeline_json(folder) -> dict:
    """pipeline.json (``folder``: the pipeline folder, or its pipeline.json), checked: its format and kind
    known, each component folder present with its model.json (or engine.json, in a folder `diffprune build`
    wrote)."""
    path = _file(folder, PIPELINE_JSON)
    folder = path.parent
    if not path.is_file():
        what = f"a single-model export ({MODEL_JSON})" if (folder / MODEL_JSON).is_file() else "no pipeline export"
        raise DiffPruneError(f"{str(folder)!r} holds no {PIPELINE_JSON}; it is {what}. Text-to-image and latent "
                             "pipelines are exported with `diffprune export arch:tiny-sd OUT` (or a diffusers pipeline "
                             "folder); a pixel UNet export is sampled without a prompt.")
    spec = read_json(path, "re-run `diffprune export`")
    if not isinstance(spec, dict) or spec.get("format") != PIPELINE_FORMAT:
        raise DiffPruneError(f"{str(path)!r} has format {spec.get('format') if isinstance(spec, dict) else None!r}; "
                             f"this runtime reads {PIPELINE_FORMAT!r}. Re-export with this version of diffprune.")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise DiffPruneError(f"{str(path)!r} is a pipeline of kind {kind!r}; this runtime runs {', '.join(KINDS)}. "
                             "Re-export with this version of diffprune, or upgrade the runtime.")
    components = spec.get("components")
    if not isinstance(components, dict):
        raise DiffPruneError(f"{str(path)!r} lists no components; re-run `diffprune export`.")
    for need in NEEDS[kind] + (("decoder",) if kind == "class-conditional" and spec.get("latent") else ()):
        names = ("vae_decoder", "vq_decoder") if need == "decoder" else (need,)
        if not any(n in components for n in names):
            raise DiffPruneError(f"{str(path)!r} is a {kind} pipeline without a {' or '.join(names)} component; "
                                 "re-run `diffprune export`.")
    for name, sub in components.items():
        if not (folder / sub / MODEL_JSON).is_file() and not (folder / sub / ENGINE_JSON).is_file():
            raise DiffPruneError(f"The {name} component of {str(folder)!r} is missing: {str(folder / sub)!r} holds "
                                 f"no {MODEL_JSON}. Copy the whole pipeline folder, or re-run `diffprune export`.")
    return spec


def _spec(meta: dict, key: str, name: str):
    return next((io for io in meta.get(key, []) if io.get("name") == name), None)


def check_text_fits(components: dict, where) -> None:
    """The text encoders' ``hidden_states`` (B, L, d_i) are what the UNet graph's ``encoder_hidden_states``
    (B, L, sum d_i) reads: the same length L and the summed width (SDXL concatenates its two encoders).
    ``components``: component name -> its model.json (or engine.json's "model"). Export runs this before
    writing a pipeline, the runtime when opening one; a mismatch is an error naming both shapes."""
    encoders = [n for n in sorted(components) if n.startswith("text_encoder")]
    unet_in = _spec(components.get("unet") or {}, "inputs", "encoder_hidden_states")
    if not encoders or unet_in is None:
        return
    outs = {n: _spec(components[n], "outputs", "hidden_states") for n in encoders}
    if any(o is None or len(o.get("shape", [])) != 3 for o in outs.values()) or len(unet_in.get("shape", [])) != 3:
        return  # graphs from before these records; the runners check shapes at the call
    lengths = {n: o["shape"][1] for n, o in outs.items()}
    widths = [o["shape"][2] for o in outs.values()]
    want_len, want_width = unet_in["shape"][1], unet_in["shape"][2]
    fixed = [v for v in [*lengths.values(), want_len] if isinstance(v, int)]
    width_known = all(isinstance(w, int) for w in [*widths, want_width])
    if len(set(fixed)) > 1 or (width_known and sum(widths) != want_width):
        given = ", ".join(f"{n} gives (batch, {lengths[n]}, {o['shape'][2]})" for n, o in outs.items())
        raise DiffPruneError(
            f"The components of {str(where)!r} do not fit one another: {given}, but the unet reads encoder_hidden_states "
            f"of (batch, {want_len}, {want_width}). The text length is the tokenizer's model_max_length and must be the "
            "one the UNet was exported with; re-export the whole pipeline with `diffprune export` (which exports them "
            "together), rather than combining components of different exports.")


def scheduler_name(config: dict) -> str:
    """The runtime scheduler for a diffusers scheduler config (its ``_class_name``; a config that sets
    use_karras_sigmas names the "-karras" variant)."""
    cls = (config or {}).get("_class_name")
    if cls in SCHEDULER_CLASSES:
        name = SCHEDULER_CLASSES[cls]
        karras = f"{name}-karras"
        return karras if config.get("use_karras_sigmas") and karras in SCHEDULER_VARIANTS else name
    raise DiffPruneError(
        f"The pipeline's scheduler is {cls or 'unnamed'}, which the runtime does not implement; it has "
        f"{', '.join(f'{v} ({k})' for k, v in SCHEDULER_CLASSES.items())}. Choose one (--scheduler / scheduler=): "
        "it is built from the same noise schedule (betas, prediction type), as diffusers' from_config does.")


def scheduler_variant(name: str, config: dict) -> tuple:
    """``(base scheduler, config)`` for the runtime scheduler ``name``: a variant's base with its settings
    applied; a base name that has variants (euler, dpm-solver++) with them off, as the name says."""
    if name in SCHEDULER_VARIANTS:
        base, settings = SCHEDULER_VARIANTS[name]
        return base, {**(config or {}), **settings}
    off = {key: False for base, settings in SCHEDULER_VARIANTS.values() if base == name for key in settings}
    return name, {**(config or {}), **off}


def step_cache_record(blocks: int, feature_shape: list) -> dict:
    """model.json's "step_cache" of a full UNet graph (export/onnx.py writes it; pipeline.json repeats it)."""
    return {"method": "DeepCache (Ma, Fang, Wang, CVPR 2024, arXiv 2312.00858)", "blocks": int(blocks),
            "feature": CACHE_FEATURE, "feature_shape": list(feature_shape), "shallow": SHALLOW_DIR}


def read_step_cache(folder, meta: dict, interval: int = 2) -> dict | None:
    """The step cache of the UNet export in ``folder`` (its model.json ``meta``) for ``interval``: None when the
    interval is 1 (no caching); else the record with ``shallow`` the shallow graph's folder. A clear error when
    the interval is not a positive integer or the export has no shallow graph."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise DiffPruneError(f"cache interval {interval!r} is not allowed; give an integer >= 1 (1: every step runs "
                             "the whole UNet; N: the whole UNet every N-th step, the shallow graph between).")
    if interval == 1:
        return None
    record = meta.get("step_cache") if isinstance(meta, dict) else None
    shallow = Path(str(folder)) / (record or {}).get("shallow", SHALLOW_DIR)
    if not isinstance(record, dict) or not (shallow / MODEL_JSON).is_file():
        raise DiffPruneError(
            f"cache interval {interval} needs a UNet exported with step caching, but {str(folder)!r} has "
            f"{'no shallow graph at ' + repr(str(shallow)) if isinstance(record, dict) else 'none'}. Re-export with "
            "`diffprune export ... --step-cache` (it writes the shallow UNet beside the full one), or use "
            "--cache-interval 1.")
    return {**record, "shallow": str(shallow)}


# -- deploy.json --------------------------------------------------------------------------------------

def deploy_file(path) -> Path | None:
    """The deploy.json that ``path`` names (the file, or a folder holding one beside no model), else None."""
    path = Path(str(path))
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / DEPLOY_JSON).is_file() and not (path / MODEL_JSON).is_file() \
            and not (path / ENGINE_JSON).is_file():
        return path / DEPLOY_JSON
    return None


def read_deploy_json(path) -> dict:
    """The configuration in a deploy.json (``path``: the file, or a folder holding one), its ``artifact`` an
    absolute path that exists, and ``file`` the deploy.json read.

    The artifact path is stored relative to the file's folder, so the select report and its work folder
    can move together; an absolute path is kept as it is."""
    file = deploy_file(path)
    if file is None:
        raise DiffPruneError(f"{str(path)!r} is not a {DEPLOY_JSON} (or a folder holding one); `diffprune select` "
                             "writes one beside its report.")
    config = read_json(file, "re-run `diffprune select`")
    if not isinstance(config, dict) or config.get("format") != DEPLOY_FORMAT:
        raise DiffPruneError(f"{str(file)!r} is not a deployment configuration (its format is "
                             f"{config.get('format') if isinstance(config, dict) else None!r}, expected "
                             f"{DEPLOY_FORMAT!r}); give the {DEPLOY_JSON} that `diffprune select` wrote.")
    for key, kind in DEPLOY_FIELDS.items():
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise DiffPruneError(f"{str(file)!r}: {key} is {value!r}, expected "
                                 f"{'a positive integer' if kind is int else 'a string'}; re-run `diffprune select`.")
    if config.get("guidance") is not None:
        raise DiffPruneError(f"{str(file)!r} sets guidance {config['guidance']!r}, which applies to text-conditioned "
                             "pipelines; this runtime version samples unconditional models only.")
    artifact = Path(config["artifact"])
    artifact = artifact if artifact.is_absolute() else (file.parent / artifact)
    if not artifact.exists():
        raise DiffPruneError(f"{str(file)!r} names the artifact {config['artifact']!r}, which is not at "
                             f"{str(artifact)!r}; keep the select report beside its .work folder, or edit the path.")
    return {**config, "artifact": str(artifact.resolve()), "file": str(file)}


# -- pruning.json -------------------------------------------------------------------------------------

def read_pruning_json(path, format: str = PRUNED_UNET_FORMAT) -> dict:
    """pruning.json of a pruned UNet folder (``path``: the folder, or the file): the widths of every layer
    (checked to be a table here; against the model by diffprune.sources.structure) and what made the model.
    ``format=PRUNED_DECODER_FORMAT`` reads a pipeline autoencoder's (vae/, vqvae/) whose decoder is pruned."""
    file = _file(path, PRUNING_JSON)
    if not file.is_file():
        raise DiffPruneError(f"{str(file.parent)!r} holds no {PRUNING_JSON}, so it is not a pruned diffprune model; "
                             "give a folder written by `diffprune prune` (or `diffprune finetune`).")
    info = read_json(file, "restore the folder as it was written, or re-create the pruned model with `diffprune prune`")
    if isinstance(info, dict):
        _check_format(info, file, (format,), "re-create the pruned model with `diffprune prune`")
    if not isinstance(info, dict) or not isinstance(info.get("widths"), dict):
        raise DiffPruneError(
            f"{str(file)!r} has no 'widths' table, so it was not written by "
            "diffprune or is damaged. Re-create the pruned model with `diffprune prune`."
        )
    return info


# -- latency tables -----------------------------------------------------------------------------------
# What a latency table must hold for diffprune.latency.model to predict with it, and what it records of how
# it was measured (the host, the backend and its precision, the batch, the resolution, the threads).
LATENCY_TABLE_FIELDS = {"key": str, "backend": str, "batch": int, "host": dict, "versions": dict, "model": dict,
                        "resolution": list, "layers": list, "groups": dict, "coefficients": dict, "dense_ms": float}
LATENCY_LAYER_FIELDS = ("name", "stage", "macs", "elements", "out_group", "in_group")
# Recorded since the fit weighs a concatenation's input by its parts; a table without them predicts with
# in_group alone, as it was fitted (format unchanged: both read the same).
LATENCY_LAYER_OPTIONAL = {"in_channels": int, "out_channels": int, "in_parts": dict}


def _bad_layer(layer) -> bool:
    if not isinstance(layer, dict) or any(k not in layer for k in LATENCY_LAYER_FIELDS):
        return True
    if any(k in layer and not isinstance(layer[k], kind) for k, kind in LATENCY_LAYER_OPTIONAL.items()):
        return True
    parts = layer.get("in_parts") or {}
    return bool(parts) and (not isinstance(layer.get("in_channels"), int) or layer["in_channels"] <= 0
                            or not all(isinstance(n, int) and n >= 0 for n in parts.values())
                            or sum(parts.values()) > layer["in_channels"])


def read_latency_table(path) -> dict:
    """A latency table written by ``diffprune profile`` (diffprune.latency.profile), checked: its format string,
    the fields above, every layer's fields, and coefficients for every stage its layers name."""
    file = Path(path)
    remedy = "re-create it with `diffprune profile`"
    table = read_json(file, remedy) if file.is_file() else None
    if table is None:
        raise DiffPruneError(f"Latency table {str(file)!r} does not exist; give a file written by `diffprune profile "
                             "SRC --backend B --out TABLE.json`, or leave --latency-table out to measure one now.")
    if not isinstance(table, dict) or table.get("format") != LATENCY_TABLE_FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        raise DiffPruneError(f"{str(file)!r} is not a latency table (format {found!r}; this version reads "
                             f"{LATENCY_TABLE_FORMAT!r}); {remedy}.")
    bad = [k for k, kind in LATENCY_TABLE_FIELDS.items()
           if not isinstance(table.get(k), (int, float) if kind is float else kind)]
    layers = table.get("layers") if isinstance(table.get("layers"), list) else []
    bad += [f"layers[{i}]" for i, layer in enumerate(layers) if _bad_layer(layer)][:3]
    coefficients = table.get("coefficients") if isinstance(table.get("coefficients"), dict) else {}
    per_stage = coefficients.get("ms_per_gmac") if isinstance(coefficients.get("ms_per_gmac"), dict) else {}
    if not all(isinstance(coefficients.get(k), (int, float)) for k in ("constant_ms", "ms_per_melement")):
        bad.append("coefficients")
    missing = sorted({str(layer.get("stage")) for layer in layers if isinstance(layer, dict) and "stage" in layer
                      and layer["stage"] not in per_stage})
    bad += [f"coefficients.ms_per_gmac[{s!r}]" for s in missing]
    if bad:
        raise DiffPruneError(f"Latency table {str(file)!r} is damaged: {', '.join(bad)} missing or of the wrong "
                             f"type; {remedy}.")
    return table
# -- auto choices (cache) ------------------------------------------------------------------------------
AUTO_FIELDS = {"key": str, "chosen": str, "reason": str, "trials": list}


def read_auto_choice(path) -> dict | None:
    """A cached ``--backend auto`` choice (runtime/auto.py writes it), or None when there is none to trust: a
    cache entry that is missing, damaged or of another format is measured again, never an error."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != AUTO_FORMAT or any(
            not isinstance(record.get(k), t) for k, t in AUTO_FIELDS.items()):
        return None
    return record


__all__ = [
    "MODEL_JSON", "ENGINE_JSON", "PIPELINE_JSON", "DEPLOY_JSON", "PRUNING_JSON", "ORT_CPU_FILE", "graph_file",
    "ONNX_FORMAT", "OPENVINO_FORMAT", "TENSORRT_FORMAT", "PIPELINE_FORMAT", "DEPLOY_FORMAT", "PRUNED_UNET_FORMAT",
    "PRUNED_DECODER_FORMAT", "LATENCY_TABLE_FORMAT", "LATENCY_TABLE_FIELDS", "AUTO_FORMAT", "AUTO_FIELDS", "MODEL_FORMATS",
    "KINDS", "TEXT_KINDS", "NEEDS", "SCHEDULER_CLASSES", "DIFFUSERS_SCHEDULERS", "SCHEDULER_VARIANTS", "DEPLOY_FIELDS",
    "read_json", "read_model_json", "read_engine_json", "read_pipeline_json", "read_deploy_json", "read_pruning_json",
    "read_latency_table", "read_auto_choice",
    "check_spec", "check_fields", "check_text_fits", "deploy_file", "is_pipeline", "scheduler_name",
    "scheduler_variant", "CACHE_FEATURE", "SHALLOW_DIR", "step_cache_record", "read_step_cache",
]
