"""The safe checkpoint format: a folder of JSON and safetensors, never pickle.

    config.json                          dense diffusers config (architecture and block layout)
    diffusion_pytorch_model.safetensors  the (pruned) weights
    pruning.json                         widths of every layer + what made the model
    scheduler_config.json                the noise schedule the model was trained with

``load`` rebuilds the dense architecture from config.json, resizes it to the widths in
pruning.json and loads the weights, checking every name and shape first.
"""

import json
from pathlib import Path

from ._io import atomic_dir
from .errors import DiffPruneError

WEIGHTS = "diffusion_pytorch_model.safetensors"
FORMAT = "diffprune.pruned-unet/1"


def save(model, out, info: dict | None = None, scheduler_config: dict | None = None, overwrite: bool = False,
         extra_files: dict | None = None) -> Path:
    """Write ``model`` as a pruned-model folder at ``out`` (atomically). ``info`` joins pruning.json;
    ``extra_files`` maps file names to text written beside it (a fine-tuning log, say)."""
    from safetensors.torch import save_file

    from .conditioning import conditioning
    from .models import DEFAULT_SCHEDULER, count_macs_params, versions
    from .structure import widths

    macs, params = count_macs_params(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    record = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "conditioning": conditioning(model).to_dict(),
        **(info or {}),
        "params": params,
        "macs": macs,
        "dtype": dtype,
        "versions": versions(),
        "widths": widths(model),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_config(tmp)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "diffprune"})
        (tmp / "pruning.json").write_text(json.dumps(record, indent=1, default=str))
        (tmp / "scheduler_config.json").write_text(json.dumps(scheduler_config or DEFAULT_SCHEDULER, indent=1))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def read_info(folder) -> dict:
    from .models import _read_json

    info = _read_json(Path(folder) / "pruning.json")
    if not isinstance(info, dict) or not isinstance(info.get("widths"), dict):
        raise DiffPruneError(
            f"{str(Path(folder) / 'pruning.json')!r} has no 'widths' table, so it was not written by "
            "diffprune or is damaged. Re-create the pruned model with `diffprune prune`."
        )
    return info


def load(folder, device="cpu"):
    """Rebuild a pruned ``UNet2DModel`` or ``UNet2DConditionModel`` (the class config.json names) from
    ``folder``; its forward is bit-identical to the saved one."""
    import torch
    from safetensors import SafetensorError, safe_open

    from .models import _read_json, check_unet_config, unet_class
    from .structure import apply_widths

    folder = Path(folder)
    if not folder.is_dir():
        raise DiffPruneError(f"Pruned model folder {str(folder)!r} does not exist. Check the path.")
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
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise DiffPruneError(f"{str(folder)!r} has no {WEIGHTS}. The folder is incomplete; re-create it.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            wrong = [(k, expected[k], found[k]) for k in expected if k in found and expected[k] != found[k]]
            if missing or extra or wrong:
                detail = "; ".join(
                    [f"missing {', '.join(missing[:3])}" if missing else "",
                     f"unexpected {', '.join(extra[:3])}" if extra else "",
                     ", ".join(f"{k}: widths say {e}, file has {g}" for k, e, g in wrong[:3])]
                ).strip("; ")
                raise DiffPruneError(
                    f"The weights in {str(weights)!r} do not fit the widths in pruning.json ({detail}). "
                    "The files come from different models; restore the folder as it was written."
                )
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise DiffPruneError(
            f"{str(weights)!r} is not a readable safetensors file ({e}); it is truncated or corrupt. "
            "Re-create or re-download the model."
        ) from None
    dtype = getattr(torch, info.get("dtype", "float32"), torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
