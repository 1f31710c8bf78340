"""How many CPU threads the torch side (prune, fine-tune) uses: a policy that shares the cores when the machine is
shared.

PyTorch's CPU build runs its intra-op parallelism on GNU OpenMP (libgomp). Every parallel op ends at a barrier;
a libgomp thread that gets there first spins (GOMP_SPINCOUNT, 300,000 turns by default) before it sleeps. On a
machine whose cores other processes also want, the partner it waits for is often descheduled, and the spinning
thread burns the time slice that partner needs: beside 3 busy single-threaded processes on 2 cores, Diff-Pruning
plus 40 fine-tuning steps with PyTorch's defaults took 5.2x its time alone and 2.6x its CPU time, where a fair share
of the cores predicts 2.5x and no more CPU (benchmarks/shared_cpu.py, results/shared_cpu.md). Policies
(``DIFFPRUNE_THREAD_POLICY``):

  * ``share`` (the default): as many torch threads as the usable cores that other running tasks leave free (at
    least 1), read from /proc at the start and again every SHARE_EVERY_S seconds from prune's timestep loop and
    fine-tuning's step loop (:func:`tick`). Alone it runs like PyTorch's default (29.4 s against 31.8 s); beside
    the 3 busy processes it runs one thread, which has no barrier to wait at: 2.8x wall, 0.9x CPU, in proportion.
  * ``yield``: every usable core, and ``OMP_WAIT_POLICY=PASSIVE`` set by the ``diffprune`` command before torch is
    imported (libgomp reads it when it loads) unless the environment already says otherwise: waiting threads sleep
    at once. Proportional under load too (2.4x wall, 1.05x CPU), 10 % slower alone (35.0 s), where every barrier
    pays for a wake-up.
  * ``torch-default``: PyTorch's own thread count and wait policy.

``--threads N`` (``threads=``) fixes the count under any policy (``torch.set_num_threads(N)``); it is refused
above the cores this process may use (``os.sched_getaffinity``: a ``taskset`` or container limit counts, the
machine's core count does not).
"""

import os
import sys
import time
from pathlib import Path

from .errors import DiffPruneError

POLICY_ENV = "DIFFPRUNE_THREAD_POLICY"
POLICIES = ("share", "yield", "torch-default")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


DEFAULT_POLICY = "share"  # see the module docstring: proportional under load, PyTorch's speed alone
SHARE_EVERY_S = 5.0  # how often the share policy looks at the machine's load again


def others_running(samples: int = 5, pause: float = 0.005) -> float | None:
    """Other tasks that want a core now, on this process's share of the machine: /proc/stat's ``procs_running``
    (every runnable task of the machine, this process's running threads included) minus this process's own running
    threads (/proc/self/task/*/stat), scaled by usable cores / the machine's cores (a container pinned to 2 of 64
    cores sees the host's tasks, spread over all of them); the median of a few samples, since the count is
    instantaneous. None where /proc does not say (not Linux)."""
    counts = []
    for i in range(samples):
        try:
            stat = Path("/proc/stat").read_text()
            running = next(int(line.split()[1]) for line in stat.splitlines() if line.startswith("procs_running"))
            own = 0
            for task in Path("/proc/self/task").iterdir():
                try:
                    own += task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
                except (OSError, IndexError):
                    pass  # the thread ended while we looked
        except (OSError, StopIteration, ValueError):
            return None
        counts.append(max(0, running - max(own, 1)))
        if i + 1 < samples:
            time.sleep(pause)
    counts.sort()
    return counts[len(counts) // 2] * usable_cpus() / (os.cpu_count() or usable_cpus())


def share_threads() -> int:
    """Under the share policy: the usable cores that other runnable tasks leave free, at least 1 (every usable core
    where the load cannot be read)."""
    others = others_running()
    cores = usable_cpus()
    return cores if others is None else max(1, min(cores, int(round(cores - others))))


class _Governor:
    """The share policy at work: ``tick()`` (called by prune's timestep loop and fine-tuning's step loop) sets the
    torch threads to :func:`share_threads` again every SHARE_EVERY_S seconds; nothing when threads were given."""

    def __init__(self, active: bool = False, every: float = SHARE_EVERY_S):
        self.active, self.every = active, every
        self.last = None  # the first tick looks at once

    def tick(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        import torch

        wanted = share_threads()
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)


_governor = _Governor()


def tick() -> None:
    """Let the share policy adjust the torch threads to the machine's load (cheap: reads /proc every few seconds)."""
    _governor.tick()


def policy() -> str:
    name = os.environ.get(POLICY_ENV, DEFAULT_POLICY) or DEFAULT_POLICY
    if name not in POLICIES:
        raise DiffPruneError(f"{POLICY_ENV}={name!r} is unknown; allowed: {', '.join(POLICIES)} (share: as many threads "
                             "as the cores other tasks leave free, looked at again every few seconds; yield: waiting "
                             "OpenMP threads sleep at once; torch-default: PyTorch's own count and wait policy). "
                             "Unset it for the default, " + DEFAULT_POLICY + ".")
    return name


def check_threads(threads) -> int | None:
    """``threads`` as given (None: the default), refused unless 1 <= threads <= the cores this process may use."""
    if threads is None:
        return None
    cores = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise DiffPruneError(
            f"threads {threads!r} is not allowed: give a whole number from 1 to {cores}, the cores this process may "
            f"use here (more threads than cores make them wait on each other, which is what --threads avoids); or "
            "leave it out for all of them.")
    return threads


def prepare_environment(environ=None) -> None:
    """Before torch loads, under the yield policy: waiting OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``)
    unless the environment chose otherwise. The ``diffprune`` command calls this first."""
    environ = os.environ if environ is None else environ
    if (environ.get(POLICY_ENV) or DEFAULT_POLICY) != "yield":
        return
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_thread_policy(threads: int | None = None) -> dict:
    """Use ``threads`` torch threads (when not given: under share the cores free now, followed by :func:`tick`;
    under yield every usable core; under torch-default PyTorch's own count); returns what runs, for the artifact's
    record. Called by prune, fine-tune and the demo; a study
    harness calls it once per process.

    The wait policy reaches libgomp only if it was set before torch was imported: called later (from Python, after
    ``import torch``) it sets the thread count and records whether the wait policy is in force."""
    threads = check_threads(threads)
    name = policy()
    if name == "yield" and "torch" not in sys.modules:
        prepare_environment()
    import torch

    global _governor
    _governor = _Governor(active=name == "share" and threads is None)
    if threads is not None or name == "yield":
        torch.set_num_threads(threads or usable_cpus())
    _governor.tick()  # share: the cores free now
    return thread_record(name)


def thread_record(name: str | None = None) -> dict:
    """What the torch side runs with: threads, inter-op threads, the OpenMP wait policy, the usable cores."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "policy": name or policy(), "usable_cpus": usable_cpus()}


__all__ = ["POLICY_ENV", "POLICIES", "DEFAULT_POLICY", "usable_cpus", "policy", "check_threads", "prepare_environment",
           "apply_thread_policy", "thread_record", "others_running", "share_threads", "tick"]
