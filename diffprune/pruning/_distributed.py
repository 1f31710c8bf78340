"""Several processes for importance estimation: which share of the calibration set is this rank's, and the
collectives that make every rank see what one process would have seen.

Pruning reads torch.distributed's process group when one is initialised (``accelerate launch`` or
torchrun, through accelerate's PartialState: :func:`start_processes`); without one everything here is the
identity and one process does the whole job.
"""

from ..errors import DiffPruneError


def start_processes(device: str) -> tuple:
    """(device, whether this is the first process). Under accelerate launch / torchrun (WORLD_SIZE > 1) the
    process group is started through accelerate, as fine-tuning does, and each process gets its own GPU;
    in one process ``device`` as given. Call it before pruning; only the first process should save."""
    import os

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return device, True
    try:
        from accelerate import PartialState
    except ImportError:
        raise DiffPruneError(f"Pruning on {size} processes (WORLD_SIZE={size}: accelerate launch or torchrun) starts "
                             "them through accelerate, which is not installed in this Python. Install it with: pip "
                             "install 'diffprune[torch]', or run one process.") from None
    state = PartialState(cpu=device == "cpu")
    return str(state.device), state.is_main_process


def world() -> tuple:
    """(rank, number of processes); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def share(n: int, rank: int | None = None, size: int | None = None) -> tuple:
    """This rank's contiguous rows [lo, hi) of n; the first n % size ranks take one more."""
    if rank is None or size is None:
        rank, size = world()
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def sum_(tensor):
    """All-reduce ``tensor`` in place by summation (a no-op in one process); returns it."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_scalar(value: float, device) -> float:
    """The sum of ``value`` over the ranks, identical on every rank (float64, so the order barely matters)."""
    import torch

    if world()[1] == 1:
        return value
    return float(sum_(torch.tensor([value], dtype=torch.float64, device=device)).item())


def gather_rows(part, n: int, device):
    """Every rank's share of rows (``part``: (hi - lo, ...)) stacked in rank order: the whole (n, ...) tensor
    on every rank, on the CPU. Shares differ by one row at most; they are padded to one size to gather."""
    import torch
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return part
    most = share(n, 0, size)[1]  # rank 0's share is the largest
    padded = torch.zeros((most, *part.shape[1:]), dtype=part.dtype, device=device)
    padded[: part.shape[0]] = part.to(device)
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    rows = [share(n, r, size) for r in range(size)]
    return torch.cat([piece[: hi - lo] for piece, (lo, hi) in zip(pieces, rows)]).cpu()
