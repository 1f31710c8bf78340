"""How many CPU threads the torch side (prune, fine-tune) uses, and how they wait: a policy that yields the cores
when the machine is shared.

PyTorch's CPU build runs its intra-op parallelism on GNU OpenMP (libgomp). A libgomp thread that reaches a barrier
first spins (GOMP_SPINCOUNT, 300,000 turns by default) before it sleeps; on a machine whose cores other processes
also want, a spinning thread burns the time slice its partner needs to reach the barrier, so CPU time grows while
nothing gets done (benchmarks/shared_cpu.py measures it). What is here:

  * ``--threads N`` (``threads=``): ``torch.set_num_threads(N)``, refused above the cores this process may use
    (``os.sched_getaffinity``: a ``taskset`` or container limit counts, the machine's core count does not);
  * ``DIFFPRUNE_THREAD_POLICY=yield``: also ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once), set by
    the ``diffprune`` command before torch is imported (libgomp reads it when it loads), unless the environment
    already says otherwise, and every usable core when ``--threads`` is not given.

The default is ``torch-default`` (PyTorch's own wait policy and thread count), because the measurement does not
support the yielding policy yet: alone on the 2-core AMD EPYC, prune + 40 fine-tuning steps took 71 s with
PyTorch's defaults and 135 s with PASSIVE (one run each), and beside 3 busy processes neither finished inside
290 s (benchmarks/results/shared_cpu.md). The cause of the shared-CPU slowdown is not found yet.
"""

import os
import sys

from .errors import DiffPruneError

POLICY_ENV = "DIFFPRUNE_THREAD_POLICY"
POLICIES = ("yield", "torch-default")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


DEFAULT_POLICY = "torch-default"  # see the module docstring: yielding is not shown to help yet


def policy() -> str:
    name = os.environ.get(POLICY_ENV, DEFAULT_POLICY) or DEFAULT_POLICY
    if name not in POLICIES:
        raise DiffPruneError(f"{POLICY_ENV}={name!r} is unknown; allowed: {', '.join(POLICIES)} (torch-default, the "
                             "default: PyTorch's own wait policy; yield: waiting OpenMP threads sleep at once).")
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
    """Use ``threads`` torch threads (under the yield policy, default every usable core; else PyTorch's own count
    unless given); returns what runs, for the artifact's record. Called by prune, fine-tune and the demo; a study
    harness calls it once per process.

    The wait policy reaches libgomp only if it was set before torch was imported: called later (from Python, after
    ``import torch``) it sets the thread count and records whether the wait policy is in force."""
    threads = check_threads(threads)
    name = policy()
    if name == "yield" and "torch" not in sys.modules:
        prepare_environment()
    import torch

    if threads is not None or name == "yield":
        torch.set_num_threads(threads or usable_cpus())
    return thread_record(name)


def thread_record(name: str | None = None) -> dict:
    """What the torch side runs with: threads, inter-op threads, the OpenMP wait policy, the usable cores."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "policy": name or policy(), "usable_cpus": usable_cpus()}


__all__ = ["POLICY_ENV", "POLICIES", "DEFAULT_POLICY", "usable_cpus", "policy", "check_threads", "prepare_environment",
           "apply_thread_policy", "thread_record"]
