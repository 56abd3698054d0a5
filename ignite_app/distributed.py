"""One training run over several processes (torchrun or srun), through ``ignite.distributed``.

Everything that needs the processes of a job to agree lives here: the launcher's environment and
the backend, the process group (with a timeout, so that no rank waits forever on a hung peer),
values decided once on rank 0, failures that end every rank together, stop requests, and
checkpoint state that differs per rank. In a single process every helper is a plain pass-through.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

from ignite_app.config import Config
from ignite_app.errors import AppError, UserError

TIMEOUT_ENV = "IGNITE_APP_DIST_TIMEOUT"  # seconds any collective may wait for the other processes
DEFAULT_TIMEOUT_S = 600.0
STOP_REASONS = ("time-limit", "SIGINT", "SIGTERM")  # agreement takes the last one any rank saw
OTHER_RANKS = "other_ranks"  # key of ranks 1..N-1 in a per-rank checkpoint entry


class PeerFailed(AppError):
    """Another process of the job failed and said why; this one stops with the same exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Quiet(PeerFailed):
    """A failure already reported by rank 0: the other ranks exit without repeating it."""


def launched_distributed() -> bool:
    """True under torchrun (even with one process) or in a srun step of several tasks."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or int(env.get("WORLD_SIZE", "1")) > 1:
        return True
    return "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def in_process_group() -> bool:
    """True when this process is one rank of a torch.distributed process group."""
    from ignite import distributed as idist

    return idist.backend() is not None


def default_backend(cfg: Config, cuda_available: bool | None = None) -> str:
    """nccl when the run uses CUDA, gloo otherwise; ``--backend`` overrides (nccl needs CUDA)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    wants_cuda = cfg.device.strip().lower().split(":")[0] in ("auto", "cuda") and cuda_available
    if cfg.backend == "nccl" and not wants_cuda:
        where = "this machine has no CUDA GPU" if not cuda_available else f"--device is {cfg.device}"
        raise UserError(f"--backend nccl needs CUDA GPUs ({where}); use --backend gloo or --device cuda")
    if cfg.backend:
        return cfg.backend
    return "nccl" if wants_cuda else "gloo"


def collective_timeout() -> timedelta:
    """How long a collective waits for the other processes: ``IGNITE_APP_DIST_TIMEOUT`` seconds, else 10 minutes."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise UserError(f"invalid {TIMEOUT_ENV}={text!r}: expected a number of seconds > 0, e.g. 600")
    return timedelta(seconds=seconds)


def local_device(device: Any, spec: str, local_rank: int, gpu_count: int) -> Any:
    """In a process group, the CUDA device of this process: ``cuda:LOCAL_RANK`` (an explicit index must agree)."""
    import torch

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


def launch(resolve: Callable[[], Config], claim: Callable[[Config], Config]) -> int:
    """Train; under torchrun or srun as one rank of the job. ``claim`` picks and checks a new run's directory.

    ``idist.initialize`` is what ``idist.Parallel`` calls under a launcher; it is called directly so
    that the process group gets our timeout (Parallel passes none).
    """
    from ignite_app.run import train

    if not launched_distributed():
        return train(claim(resolve()))
    from ignite import distributed as idist

    try:
        cfg = resolve()
        backend, timeout = default_backend(cfg), collective_timeout()
    except AppError as exc:
        if _launcher_rank() == 0:
            raise
        return exc.exit_code  # the same flags fail the same way on rank 0, which reports it
    idist.initialize(backend, timeout=timeout)
    try:
        return _as_rank(lambda: _train_as_rank(cfg, claim))
    finally:
        idist.finalize()


def _launcher_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _train_as_rank(cfg: Config, claim: Callable[[Config], Config]) -> int:
    from ignite import distributed as idist

    from ignite_app.run import train

    cfg = cfg.replace(output_dir=from_rank_zero(lambda: str(claim(cfg).output_dir)))
    code = train(cfg)
    finishing()
    idist.barrier()  # leave together: torchrun tears the job down as soon as one rank exits non-zero
    return code


def finishing() -> None:
    """This rank is about to exit: the SIGTERM with which torchrun tears down the rest of the job must not kill it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _as_rank(action: Callable[[], int]) -> int:
    """Rank 0 raises errors to the command line; other ranks report theirs (unless rank 0 did) and return the code."""
    from ignite import distributed as idist

    rank = idist.get_rank()
    try:
        return action()
    except AppError as exc:
        finishing()
        if rank == 0:
            raise
        if not isinstance(exc, _Quiet):
            print(f"Error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def from_rank_zero(decide: Callable[[], str]) -> str:
    """Run ``decide`` on rank 0 only and return its result on every rank; its error is raised on every rank."""
    if not in_process_group():
        return decide()
    from ignite import distributed as idist

    message: dict[str, Any] = {}
    error: AppError | None = None
    if idist.get_rank() == 0:
        try:
            message = {"value": decide()}
        except AppError as exc:
            error, message = exc, {"error": str(exc), "code": exc.exit_code}
    message = json.loads(idist.broadcast(json.dumps(message) if idist.get_rank() == 0 else None, src=0, safe_mode=True))
    if error is not None or "error" in message:
        finishing()
    if error is not None:
        raise error
    if "error" in message:
        raise _Quiet(message["error"], int(message["code"]))
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
    import torch
    from ignite import distributed as idist

    codes = [int(c) for c in idist.all_gather(torch.tensor([error.exit_code if error else 0])).tolist()]
    failed = [rank for rank, code in enumerate(codes) if code]
    if not failed:
        return
    finishing()
    rank = idist.get_rank()
    if error is not None:
        if rank != 0 and codes[0]:
            raise _Quiet(str(error), error.exit_code) from None
        return  # the caller re-raises its own error
    first = failed[0]
    message = f"process {first} of {len(codes)} failed (its error is above); no process continued"
    raise (PeerFailed if rank == 0 else _Quiet)(message, codes[first])


def agreed_stop_reason(local: str | None) -> str | None:
    """Why to stop, the same on every rank: SIGTERM over SIGINT over the time limit, from whichever rank saw it."""
    if not in_process_group():
        return local
    from ignite import distributed as idist

    code = STOP_REASONS.index(local) + 1 if local else 0
    agreed = int(idist.all_reduce(code, op="MAX"))
    return STOP_REASONS[agreed - 1] if agreed else None


def mean_over_processes(value: float) -> float:
    """The mean of ``value`` over all ranks (itself in a single process)."""
    if not in_process_group():
        return value
    from ignite import distributed as idist

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
        from ignite import distributed as idist

        states = idist.all_gather(own)
        return {**states[0], OTHER_RANKS: list(states[1:])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load this rank's entry."""
        from ignite import distributed as idist

        rank = idist.get_rank()
        others = list(state.get(OTHER_RANKS, []))
        if rank == 0:
            self.inner.load_state_dict({k: v for k, v in state.items() if k != OTHER_RANKS})
        elif rank <= len(others):
            self.inner.load_state_dict(others[rank - 1])
