"""Fine-tuning checkpoints for exact resume, in safetensors + JSON (never pickle): the student, its EMA weights,
the optimizer's and the LR schedule's state, feature-distillation maps, the data stream's position and the loss
history, under ``OUT.ckpt/step-N/``; the latest is found, loaded and, once OUT is written, removed."""

import contextlib
import json
import shutil
import time
from pathlib import Path

from .._io import atomic_dir
from ..errors import DiffPruneError


def _optimizer_tensors(optimizer):
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if hasattr(value, "shape"):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors, meta):
    state = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, step, model, ema, optimizer, lr_scheduler, config: dict, keep: int = 2,
                    data_state: dict | None = None, projector=None, losses: list | None = None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}"
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({f"{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}, str(tmp / "ema.safetensors"))
        if projector is not None:  # feature distillation's 1x1 maps train too, and the optimizer holds their state
            save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()},
                      str(tmp / "feature_kd.safetensors"))
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"} if ema is not None else None
        (tmp / "state.json").write_text(json.dumps({
            "step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(), "ema": ema_meta,
            # Randomness is derived from (seed, step, rank): the seed and step are the whole RNG state.
            "rng": {"seed": config["seed"], "derived_from": "(seed, step, rank)"}, "config": config,
            # Streamed data: where the next batch starts (diffprune.data.stream.Stream.state); None for data in memory.
            "data": data_state,
            # loss.csv's rows so far: a resumed run writes the whole history, not only its own steps.
            "losses": losses,
        }, indent=1, default=str))
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path):
    steps = sorted(p for p in Path(folder).glob("step-*") if (p / "state.json").is_file())
    return steps[-1] if steps else None


def checkpoint_folder(out, checkpoint_dir=None) -> Path:
    """Where the checkpoints of a run writing ``out`` go: ``checkpoint_dir``, else OUT.ckpt beside it."""
    out = Path(out)
    return Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")


def remove_checkpoints(folder: Path) -> None:
    """Delete the checkpoints (step-*) in ``folder``, and the folder once empty: after the model is safely
    written they only take space. Anything else a user keeps there stays."""
    folder = Path(folder)
    for path in folder.glob("step-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty


def load_checkpoint(path: Path, model, ema, optimizer, lr_scheduler, projector=None) -> int:
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        if ema is not None and (path / "ema.safetensors").is_file():
            shadow = load_file(str(path / "ema.safetensors"))
            for i, p in enumerate(ema.shadow_params):
                p.copy_(shadow[str(i)])
            for key, value in (state["ema"] or {}).items():
                setattr(ema, key, value)
        if projector is not None:
            projector.load_state_dict(load_file(str(path / "feature_kd.safetensors")), strict=True)
        _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DiffPruneError(
            f"Cannot resume from {str(path)!r}: {type(e).__name__}: {str(e).splitlines()[0]}. The checkpoint is "
            "damaged or from another model; delete it to resume from the one before, or start without --resume."
        ) from None
    return int(state["step"])


def time_for_checkpoint(last_saved: float, minutes: float, accelerator) -> bool:
    """Whether ``minutes`` have passed since the last checkpoint, decided by the first process and shared, so
    that every process reaches the checkpoint's barrier together (clocks and paces differ)."""
    if not minutes:
        return False
    due = time.perf_counter() - last_saved >= 60 * minutes
    if accelerator.num_processes > 1:
        import torch
        from accelerate.utils import broadcast

        due = bool(broadcast(torch.tensor([int(due)], device=accelerator.device), from_process=0).item())
    return due


def saved_losses(path, step: int) -> list:
    """The loss.csv rows a checkpoint holds (up to its step), so a resumed run's loss.csv is whole."""
    import sys

    saved = json.loads((Path(path) / "state.json").read_text()).get("losses")
    if saved is None:
        print(f"fine-tune: warning: the checkpoint {str(path)!r} holds no loss history (written by an older diffprune); "
              f"loss.csv will start after step {step}.", file=sys.stderr)
        return []
    return [row for row in saved if row[0] <= step]


def restore_data(path, streamed) -> None:
    """Put the stream back where the checkpoint ``path`` left it; refuse a checkpoint of the other kind."""
    saved = json.loads((Path(path) / "state.json").read_text()).get("data")
    if streamed is None and saved is not None:
        raise DiffPruneError(f"The checkpoint {str(path)!r} was written by a run that streamed its data; resume it with "
                             "--stream (stream=True) and the same data, or start afresh.")
    if streamed is not None:
        if saved is None:
            raise DiffPruneError(f"The checkpoint {str(path)!r} was written by a run that held its data in memory; "
                                 "resume it without --stream, or start afresh.")
        streamed.stream.restore(saved)
