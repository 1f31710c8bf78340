"""The safe checkpoint format: a folder of JSON and safetensors, never pickle.

    config.json                          dense diffusers config (architecture and block layout)
    diffusion_pytorch_model.safetensors  the (pruned) weights
    pruning.json                         widths of every layer + what made the model
    scheduler_config.json                the noise schedule the model was trained with

A UNet of a pipeline (a diffusers pipeline folder, or ``arch:NAME`` with a text encoder or VAE) is saved
as a pipeline folder instead: the files above in ``unet/``, the pipeline's other components carried over
(copied; built-in ones written with their seeded weights), ``scheduler/`` and ``model_index.json``, so
that the result prunes, fine-tunes, exports and samples like the pipeline it came from. Only diffprune
reads its ``unet/`` (the widths are not diffusers config fields).

``load`` rebuilds the dense architecture from config.json, resizes it to the widths in
pruning.json and loads the weights, checking every name and shape first.
"""

import json
from pathlib import Path

from .._io import atomic_dir, quiet_library_bars
from ..errors import DiffPruneError
from ..runtime.formats import PRUNED_UNET_FORMAT, PRUNING_JSON, read_pruning_json
from .resolve import pipeline_source

WEIGHTS = "diffusion_pytorch_model.safetensors"


def save(model, out, info: dict | None = None, scheduler_config: dict | None = None, overwrite: bool = False,
         extra_files: dict | None = None, pipeline=None) -> Path:
    """Write ``model`` as a pruned-model folder at ``out`` (atomically). ``info`` joins pruning.json;
    ``extra_files`` maps file names to text written beside it (a fine-tuning log, say). ``pipeline``: the
    source the UNet came from; when it is a pipeline (see :func:`pipeline_source`) ``out`` becomes a
    pipeline folder with the UNet in ``unet/`` and the source's other components beside it."""
    from safetensors.torch import save_file

    from .conditioning import conditioning
    from .architectures import DEFAULT_SCHEDULER
    from .unet import count_macs_params, versions
    from .structure import widths

    macs, params = count_macs_params(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    record = {
        "format": PRUNED_UNET_FORMAT,
        "model_class": type(model).__name__,
        "conditioning": conditioning(model).to_dict(),
        **(info or {}),
        "params": params,
        "macs": macs,
        "dtype": dtype,
        "versions": versions(),
        "widths": widths(model),
    }
    carried = pipeline_source(pipeline)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        unet_dir = tmp / "unet" if carried else tmp
        unet_dir.mkdir(exist_ok=True)
        model.save_config(unet_dir)
        save_file(state, str(unet_dir / WEIGHTS), metadata={"format": "pt", "producer": "diffprune"})
        (unet_dir / PRUNING_JSON).write_text(json.dumps(record, indent=1, default=str))
        (unet_dir / "scheduler_config.json").write_text(json.dumps(scheduler_config or DEFAULT_SCHEDULER, indent=1))
        for name, text in (extra_files or {}).items():
            (unet_dir / name).write_text(text)
        if carried:
            _carry_components(carried, tmp, model, scheduler_config or DEFAULT_SCHEDULER)
    return Path(out)


def write_builtin_parts(arch: str, folder: Path, vae=None) -> dict:
    """The text encoder(s), tokenizer(s) and VAE of the built-in pipeline ``arch`` (seeded weights; ``vae``
    replaces the VAE) into ``folder``, as save_pretrained lays them out; returns model_index.json's entries."""
    from .architectures import VAE_SETUPS
    from .vae import build_vae
    from .architectures import TEXT_SETUPS
    from .text import build_text_encoder

    xl = arch in TEXT_SETUPS and len(TEXT_SETUPS[arch][0]) == 2
    index = {"_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"}
    quiet_library_bars()
    encoder = build_text_encoder(arch)
    for i, (tokenizer, text_model) in enumerate(encoder.parts if encoder else []):
        suffix = f"_{i + 1}" if i else ""
        text_model.save_pretrained(folder / f"text_encoder{suffix}")
        tokenizer.save(folder / f"tokenizer{suffix}")
        index[f"text_encoder{suffix}"] = ["transformers", type(text_model).__name__]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    if vae is not None or arch in VAE_SETUPS:
        (vae or build_vae(VAE_SETUPS[arch])).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if not xl:  # the SD pipelines' optional parts, absent (as in a pipeline saved without them)
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index


def _carry_components(carried, tmp: Path, model, scheduler_config: dict) -> None:
    """Everything of the source pipeline but its UNet and schedule, into ``tmp`` (see the module doc)."""
    import shutil

    from .folders import _read_json
    from .unet import versions

    kind, where = carried
    scheduler_dir = tmp / "scheduler"
    scheduler_dir.mkdir()
    (scheduler_dir / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=1))
    if kind == "folder":
        index = _read_json(where / "model_index.json")
        for entry in sorted(where.iterdir()):
            if entry.name in ("unet", "scheduler") or entry.name.startswith("."):
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            elif entry.name != "model_index.json":
                shutil.copyfile(entry, tmp / entry.name)
    else:
        index = write_builtin_parts(where, tmp)
    index.update({
        "_diffusers_version": versions().get("diffusers", "?"),
        "unet": ["diffusers", type(model).__name__],
        "scheduler": ["diffusers", scheduler_config.get("_class_name", "DDPMScheduler")],
        "_diffprune": "unet/ is a pruned diffprune folder (pruning.json); load it with diffprune, not diffusers",
    })
    (tmp / "model_index.json").write_text(json.dumps(index, indent=1))


def read_info(folder) -> dict:
    """pruning.json of ``folder``, checked (:func:`diffprune.runtime.formats.read_pruning_json`)."""
    return read_pruning_json(folder)


def _is_pruned_decoder(folder: Path) -> bool:
    from ..runtime.formats import PRUNED_DECODER_FORMAT

    try:
        return json.loads((folder / PRUNING_JSON).read_text()).get("format") == PRUNED_DECODER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False  # read_info below names what is wrong with it


def load(folder, device="cpu"):
    """Rebuild a pruned ``UNet2DModel`` or ``UNet2DConditionModel`` (the class config.json names) from
    ``folder``; its forward is bit-identical to the saved one. A pipeline's ``vae/`` or ``vqvae/`` holding a
    pruned decoder (diffprune.pruning.decoder) gives its AutoencoderKL or VQModel."""
    import torch

    from .folders import _read_json
    from .unet import check_unet_config, unet_class
    from .structure import apply_widths, load_checked_weights

    folder = Path(folder)
    if not folder.is_dir():
        raise DiffPruneError(f"Pruned model folder {str(folder)!r} does not exist. Check the path.")
    if _is_pruned_decoder(folder):  # a pipeline's vae/ or vqvae/ with a pruned decoder
        from .vae import load_pruned_autoencoder

        return load_pruned_autoencoder(folder).to(device)
    config = _read_json(folder / "config.json")
    check_unet_config(config, folder / "config.json")
    info = read_info(folder)
    cls = unet_class(config, folder / "config.json")
    recorded = info.get("model_class", cls.__name__)
    if recorded != cls.__name__:
        raise DiffPruneError(
            f"config.json in {str(folder)!r} names a {cls.__name__} but pruning.json records a {recorded}: the files "
            "come from different models; restore the folder as it was written."
        )
    try:
        model = cls.from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise DiffPruneError(f"config.json in {str(folder)!r} does not build a {cls.__name__}: {e}.") from None
    apply_widths(model, info["widths"])
    state = load_checked_weights(model, folder / WEIGHTS)
    dtype = getattr(torch, info.get("dtype", "float32"), torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
