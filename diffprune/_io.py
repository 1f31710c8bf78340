"""Writing and telling: atomic writes (an artifact appears complete or not at all), progress bars that stay
quiet off a terminal, and one-line progress there instead."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiffPruneError
from .runtime.files import atomic_write_bytes  # the runtime writes its PNGs the same way

__all__ = ["ProgressLines", "atomic_dir", "atomic_write_bytes", "check_writable", "duration", "heartbeat", "quiet"]

# When stderr is no terminal the bars are off (see quiet), and a long stage would print nothing for many
# minutes; a plain progress line this often says it is alive, where it is and how long it has left.
PROGRESS_EVERY_S = 60.0
_last_line = [0.0]  # when the last progress line was printed (perf_counter), shared by every writer


def quiet(progress: bool):
    """tqdm's ``disable`` for a progress bar: off when asked, and off when stderr is not a terminal
    (``None``), so logs of CI jobs and batch runs get no thousands of carriage-return lines."""
    return None if progress else True


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``: the unit a person reads a wait in."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _line_due(now: float) -> bool:
    return now - _last_line[0] >= PROGRESS_EVERY_S


def _print_line(text: str, now: float) -> None:
    import sys

    _last_line[0] = now
    print(text, file=sys.stderr, flush=True)


class ProgressLines:
    """A plain progress line on stderr every PROGRESS_EVERY_S seconds for a loop, only when stderr is no
    terminal (where tqdm's bar is off): ``label done/total, elapsed, ETA[, note]``. The ETA is the measured
    pace since ``start`` times what is left; ``bound=True`` says ``total`` is only an upper bound (a loop
    that may stop early), and so is the ETA."""

    def __init__(self, label: str, total: int, enabled: bool = True, start: int = 0, bound: bool = False):
        import sys
        import time

        self.on = bool(enabled) and not sys.stderr.isatty()
        self.label, self.total, self.start, self.bound = label, total, start, bound
        self.started = self.last = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        import time

        if not self.on:
            return
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or not _line_due(now):
            return
        self.last = now
        elapsed = now - self.started
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        left = ""
        if rate > 0:
            left = f", {'at most' if self.bound else 'about'} {duration((self.total - done) / rate)} left"
        total = f"at most {self.total}" if self.bound else str(self.total)
        _print_line(f"{self.label} {done}/{total}, {duration(elapsed)} elapsed{left}{note}", now)


@contextlib.contextmanager
def heartbeat(label: str, enabled: bool = True):
    """While the block runs, ``label: still running, N elapsed`` on stderr every PROGRESS_EVERY_S seconds when
    stderr is no terminal and no other progress line was printed in that time (a stage whose loop reports
    itself through ProgressLines stays quiet here)."""
    import sys
    import threading
    import time

    if not enabled or sys.stderr.isatty():
        yield
        return
    stop, started = threading.Event(), time.perf_counter()

    def beat():
        while not stop.wait(min(PROGRESS_EVERY_S, 5.0) if PROGRESS_EVERY_S > 0 else 0.01):
            now = time.perf_counter()
            if now - started >= PROGRESS_EVERY_S and _line_due(now):
                _print_line(f"{label}: still running, {duration(now - started)} elapsed", now)

    thread = threading.Thread(target=beat, name=f"heartbeat {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
