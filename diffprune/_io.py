"""Atomic writes: an artifact appears complete or not at all."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiffPruneError
from .runtime.files import atomic_write_bytes  # the runtime writes its PNGs the same way

__all__ = ["atomic_dir", "atomic_write_bytes", "check_writable", "quiet"]


def quiet(progress: bool):
    """tqdm's ``disable`` for a progress bar: off when asked, and off when stderr is not a terminal
    (``None``), so logs of CI jobs and batch runs get no thousands of carriage-return lines."""
    return None if progress else True


def quiet_library_bars() -> None:
    """transformers' and huggingface_hub's own progress bars ("Loading weights", "Writing model shards") follow the
    same rule as ours: none when stderr is not a terminal."""
    import sys

    if sys.stderr.isatty():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    logging.disable_progress_bar()
    disable_progress_bars()


def check_writable(out, overwrite: bool) -> Path:
    """Refuse to replace an existing artifact unless ``overwrite`` is set."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DiffPruneError(
            f"Output {str(out)!r} already exists. diffprune never replaces an existing artifact "
            "silently: pass --overwrite (overwrite=True in Python) to replace it, or choose another path."
        )
    if not out.parent.exists():
        raise DiffPruneError(
            f"The folder {str(out.parent)!r} that should hold {out.name!r} does not exist. "
            "Create it first or pick an output path inside an existing folder."
        )
    return out


@contextlib.contextmanager
def atomic_dir(out, overwrite: bool = False):
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds.

    A crash (or Ctrl-C) inside the block leaves ``out`` untouched and removes the temporary folder.
    """
    out = check_writable(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the artifact gets ordinary folder permissions
    try:
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create 0600 files
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out.exists():
            # Move the old artifact aside first so the swap leaves no moment without a complete one.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
