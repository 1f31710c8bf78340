"""Reading model folders: their JSON, a pipeline folder's components, the noise schedule a folder carries,
and where a model shipped in the package (``builtin:NAME``) lies. Import-light (no torch)."""

import json
from pathlib import Path

from ..errors import DiffPruneError
from .architectures import BUILTIN_MODELS, DEFAULT_SCHEDULER

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffPruneError(f"Expected {str(path)!r} but it does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffPruneError(
            f"{str(path)!r} is not valid JSON ({e}). The file is corrupt or was cut short: "
            "restore it from the original model or re-create the artifact."
        ) from None


def _scheduler_config(folder: Path) -> dict:
    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return dict(DEFAULT_SCHEDULER)


def builtin_path(src: str) -> Path:
    """The folder of a model shipped in the package (``builtin:NAME``)."""
    path = ASSETS / src[len("builtin:"):]
    if not ((path / "pruning.json").is_file() or (path / "unet" / "pruning.json").is_file()):
        raise DiffPruneError(f"Unknown built-in model {src!r}; the package ships {', '.join(BUILTIN_MODELS)}.")
    return path


def pipeline_component(folder, name: str) -> Path:
    """The ``name`` subfolder (unet, vae, scheduler, text_encoder, ...) of a diffusers pipeline folder,
    or a DiffPruneError saying it is missing and what the pipeline lists."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    part = folder / name
    if not part.is_dir():
        listed = sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)) if isinstance(index, dict) else []
        raise DiffPruneError(
            f"The pipeline folder {str(folder)!r} has no {name}/ subfolder "
            f"({'model_index.json lists ' + ', '.join(listed) if listed else 'model_index.json lists no components'}"
            f"{'; ' + name + ' is listed but its folder is missing' if name in listed else ''}). "
            f"A pipeline saved with save_pretrained has one folder per component: copy the whole pipeline, "
            f"or point to a folder that holds the {name}'s config.json."
        )
    return part


def tokenizer_length(folder) -> int | None:
    """The tokens a pipeline folder's ``tokenizer/`` pads every prompt to (its ``model_max_length``, read as the
    runtime's tokenizer reads it, without loading anything); None when the folder has no tokenizer/."""
    from ..runtime.text import tokenizer_settings

    tokenizer = Path(folder) / "tokenizer"
    return tokenizer_settings(tokenizer)[2] if tokenizer.is_dir() else None
