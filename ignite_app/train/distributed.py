"""What the processes of a job (torchrun or srun) must agree on, through ``ignite.distributed``.

Values decided once on rank 0, failures that end every rank together, stop requests, means over
ranks, and checkpoint state that differs per rank. In a single process every helper is a plain
pass-through. Starting the processes is :mod:`ignite_app.train.launch`.
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
from ignite import distributed as idist

from ignite_app.errors import AppError, UserError

STOP_REASONS = ("time-limit", "SIGUSR2", "SIGUSR1", "SIGINT", "SIGTERM")  # agreement takes the last one any rank saw
OTHER_RANKS = "other_ranks"  # key of ranks 1..N-1 in a per-rank checkpoint entry


class PeerFailed(AppError):
    """Another process of the job failed and said why; this one stops with the same exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class QuietPeerFailure(PeerFailed):
    """A failure already reported by rank 0: the other ranks exit without repeating it."""


def in_process_group() -> bool:
    """True when this process is one rank of a torch.distributed process group."""
    return idist.backend() is not None


def local_device(device: Any, spec: str, local_rank: int, gpu_count: int) -> Any:
    """In a process group, the CUDA device of this process: ``cuda:LOCAL_RANK`` (an explicit index must agree)."""
    if device.type != "cuda":
        return device
    index = spec.strip().lower().partition(":")[2]
    if index and int(index) != local_rank:
        raise UserError(
            f"--device {spec}: under torchrun or srun each process uses the GPU of its local rank "
            f"(this is local rank {local_rank}); pass --device cuda"
        )
    if local_rank >= gpu_count:
        raise UserError(
            f"local rank {local_rank} has no GPU: this node has {gpu_count} CUDA device(s); "
            "start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def ignore_teardown_sigterm() -> None:
    """This rank is about to exit: the SIGTERM with which torchrun tears down the rest of the job must not kill it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def from_rank_zero(decide: Callable[[], str]) -> str:
    """Run ``decide`` on rank 0 only and return its result on every rank; its error is raised on every rank."""
    if not in_process_group():
        return decide()
    message: dict[str, Any] = {}
    error: AppError | None = None
    if idist.get_rank() == 0:
        try:
            message = {"value": decide()}
        except AppError as exc:
            error, message = exc, {"error": str(exc), "code": exc.exit_code}
    message = json.loads(idist.broadcast(json.dumps(message) if idist.get_rank() == 0 else None, src=0, safe_mode=True))
    if error is not None or "error" in message:
        ignore_teardown_sigterm()
    if error is not None:
        raise error
    if "error" in message:
        raise QuietPeerFailure(message["error"], int(message["code"]))
    return str(message["value"])


@contextmanager
def fail_together() -> Iterator[None]:
    """Run a block on every rank; if it raises an AppError on any rank, it raises on all of them.

    The block must hold no collective of its own. Rank 0 reports its error, or names the rank that
    failed; a rank that fails alone reports its own error.
    """
    if not in_process_group():
        yield
        return
    try:
        yield
    except AppError as exc:
        _agree_on_failure(exc)
        raise
    _agree_on_failure(None)


def _agree_on_failure(error: AppError | None) -> None:
    codes = [int(c) for c in idist.all_gather(torch.tensor([error.exit_code if error else 0])).tolist()]
    failed = [rank for rank, code in enumerate(codes) if code]
    if not failed:
        return
    ignore_teardown_sigterm()
    rank = idist.get_rank()
    if error is not None:
        if rank != 0 and codes[0]:
            raise QuietPeerFailure(str(error), error.exit_code) from None
        return  # the caller re-raises its own error
    first = failed[0]
    message = f"process {first} of {len(codes)} failed (its error is above); no process continued"
    raise (PeerFailed if rank == 0 else QuietPeerFailure)(message, codes[first])


def agreed_stop_reason(local: str | None) -> str | None:
    """Why to stop, the same on every rank: SIGTERM over SIGINT over the time limit, from whichever rank saw it."""
    if not in_process_group():
        return local
    code = STOP_REASONS.index(local) + 1 if local else 0
    agreed = int(idist.all_reduce(code, op="MAX"))
    return STOP_REASONS[agreed - 1] if agreed else None


def mean_over_processes(value: float) -> float:
    """The mean of ``value`` over all ranks (itself in a single process)."""
    if not in_process_group():
        return value
    return float(idist.all_reduce(float(value))) / idist.get_world_size()


class PerRankState:
    """Checkpoint state that differs per rank (RNG streams, partial loss sums): every rank's, saved by rank 0.

    Rank 0's entry keeps the single-process layout, so checkpoints load either way; the other ranks'
    entries go under ``other_ranks``. A rank with no saved entry (fewer processes before) keeps its own state.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def state_dict(self) -> dict[str, Any]:
        """Gather every rank's state (a collective: Checkpoint calls it on all ranks at the same point)."""
        own = self.inner.state_dict()
        if not in_process_group():
            return own
        states = idist.all_gather(own)
        return {**states[0], OTHER_RANKS: list(states[1:])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load this rank's entry."""
        rank = idist.get_rank()
        others = list(state.get(OTHER_RANKS, []))
        if rank == 0:
            self.inner.load_state_dict({k: v for k, v in state.items() if k != OTHER_RANKS})
        elif rank <= len(others):
            self.inner.load_state_dict(others[rank - 1])
