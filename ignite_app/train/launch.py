"""Start training: in this process, or as one rank of a torchrun or srun job.

The launcher's environment decides; the process group gets a timeout so that no rank waits forever
on a hung peer, and every rank leaves together.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Callable

import torch
from ignite import distributed as idist

from ignite_app.config import Config
from ignite_app.errors import AppError, UserError
from ignite_app.train.autoresume import follow_rank_zero
from ignite_app.train.distributed import QuietPeerFailure, from_rank_zero, ignore_teardown_sigterm
from ignite_app.train.elastic import join_process_group, report_broken_group
from ignite_app.train.loop import train

TIMEOUT_ENV = "IGNITE_APP_DIST_TIMEOUT"  # seconds any collective may wait for the other processes
DEFAULT_TIMEOUT_S = 600.0


def launched_distributed() -> bool:
    """True under torchrun (even with one process) or in a srun step of several tasks."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or int(env.get("WORLD_SIZE", "1")) > 1:
        return True
    return "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def default_backend(cfg: Config, cuda_available: bool | None = None) -> str:
    """nccl when the run uses CUDA, gloo otherwise; ``--backend`` overrides (nccl needs CUDA)."""
    if cuda_available is None:
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


def launch(resolve: Callable[[], Config], claim: Callable[[Config], Config]) -> int:
    """Train; under torchrun or srun as one rank of the job. ``claim`` picks and checks a new run's directory.

    ``idist.initialize`` is what ``idist.Parallel`` calls under a launcher; it is called directly so
    that the process group gets our timeout (Parallel passes none).
    """
    if not launched_distributed():
        return train(claim(resolve()))
    try:
        cfg = resolve()
        backend, timeout = default_backend(cfg), collective_timeout()
    except AppError as exc:
        if _launcher_rank() == 0:
            raise
        return exc.exit_code  # the same flags fail the same way on rank 0, which reports it
    join_process_group(backend, timeout)  # issue 17: each torchrun attempt in its own store keys
    try:
        return _as_rank(lambda: _train_as_rank(cfg, claim))
    finally:
        idist.finalize()


def _launcher_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _train_as_rank(cfg: Config, claim: Callable[[Config], Config]) -> int:
    with report_broken_group():  # issue 17: a dead or hung peer is one line, and torchrun restarts the job
        cfg = follow_rank_zero(cfg)  # issue 17: one decision to resume or start (--resume auto), rank 0's
        cfg = cfg.replace(output_dir=from_rank_zero(lambda: str(claim(cfg).output_dir)))
        code = train(cfg)
        ignore_teardown_sigterm()
        idist.barrier()  # leave together: torchrun tears the job down as soon as one rank exits non-zero
    return code


def _as_rank(action: Callable[[], int]) -> int:
    """Rank 0 raises errors to the command line; other ranks report theirs (unless rank 0 did) and return the code."""
    rank = idist.get_rank()
    try:
        return action()
    except AppError as exc:
        ignore_teardown_sigterm()
        if rank == 0:
            raise
        if not isinstance(exc, QuietPeerFailure):
            print(f"Error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


