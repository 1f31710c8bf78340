"""How many CPU threads the torch side (prune, fine-tune) uses, and how they wait: a policy that yields the cores
when the machine is shared.

PyTorch's CPU build runs its intra-op parallelism on GNU OpenMP (libgomp). A libgomp thread that reaches a barrier
first spins (GOMP_SPINCOUNT, 300,000 turns by default) before it sleeps; on a machine whose cores other processes
also want, a spinning thread burns the time slice its partner needs to reach the barrier, so CPU time grows while
nothing gets done (benchmarks/shared_cpu.py measures it). The policy here:

  * ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once), set by the ``diffprune`` command before torch
    is imported (libgomp reads it when it loads), unless the environment already says otherwise;
  * ``torch.set_num_threads(threads)``, ``threads`` defaulting to the cores this process may use
    (``os.sched_getaffinity``: a ``taskset`` or container limit counts, the machine's core count does not).

``DIFFPRUNE_THREAD_POLICY=torch-default`` turns both off (PyTorch's own defaults), to compare against.
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


def policy() -> str:
    name = os.environ.get(POLICY_ENV, "yield") or "yield"
    if name not in POLICIES:
        raise DiffPruneError(f"{POLICY_ENV}={name!r} is unknown; allowed: {', '.join(POLICIES)} (yield, the default: "
                             "waiting threads sleep and --threads sets the count; torch-default: PyTorch's own).")
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
    """Before torch loads: waiting OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the environment
    chose otherwise or the policy is torch-default. The ``diffprune`` command calls this first."""
    environ = os.environ if environ is None else environ
    if environ.get(POLICY_ENV, "yield") == "torch-default":
        return
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_thread_policy(threads: int | None = None) -> dict:
    """Use ``threads`` torch threads (default: the usable cores) under the yielding policy; returns what runs, for
    the artifact's record. Called by prune, fine-tune and the demo; a study harness calls it once per process.

    The wait policy reaches libgomp only if it was set before torch was imported: called later (from Python, after
    ``import torch``) it sets the thread count and records whether the wait policy is in force."""
    threads = check_threads(threads)
    name = policy()
    torch_loaded = "torch" in sys.modules
    if name == "yield":
        if not torch_loaded:
            prepare_environment()
        import torch

        torch.set_num_threads(threads or usable_cpus())
    return thread_record(name)


def thread_record(name: str | None = None) -> dict:
    """What the torch side runs with: threads, inter-op threads, the OpenMP wait policy, the usable cores."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "policy": name or policy(), "usable_cpus": usable_cpus()}


__all__ = ["POLICY_ENV", "POLICIES", "usable_cpus", "policy", "check_threads", "prepare_environment",
           "apply_thread_policy", "thread_record"]
