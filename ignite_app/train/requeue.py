"""``--requeue-signal``: SLURM's warning before a time limit saves the run and requeues the job.

``sbatch --signal=USR1@90 --requeue`` sends SIGUSR1 to every task 90 s before the limit. Each rank
stops at the next iteration boundary (:class:`~ignite_app.train.handlers.StopSignal`), rank 0 saves
a checkpoint, and once that checkpoint is on disk rank 0 asks SLURM to requeue the job; the
requeued job runs the same command, and ``--resume auto`` continues the run. Outside SLURM the
signal only saves and exits, like SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable, Mapping

from ignite_app.config import Config

Echo = Callable[[str], None]
SCONTROL_TIMEOUT_S = 60  # scontrol answers in well under a second; a hung controller must not hold the job


def requeue_signal_number(cfg: Config) -> int | None:
    """The signal number of ``--requeue-signal``, or None."""
    return int(signal.Signals[f"SIG{cfg.requeue_signal}"]) if cfg.requeue_signal else None


def stop_exit_code(reason: str) -> int:
    """The exit code of a run stopped for ``reason``: 128 + the signal number (143 for SIGTERM), 0 for the time limit."""
    return 128 + int(signal.Signals[reason]) if reason.startswith("SIG") else 0


def requeue_after_stop(cfg: Config, reason: str, echo: Echo, warn: Echo | None = None,
                       environ: Mapping[str, str] = os.environ) -> bool:
    """After a stop by the requeue signal under SLURM, ``scontrol requeue $SLURM_JOB_ID``; True if SLURM took it.

    Call it on rank 0 only, after the stop's checkpoint is on disk: SLURM ends the job's processes as it requeues.
    """
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    job = environ.get("SLURM_JOB_ID")
    if not job or cfg.requeue_signal is None or reason != f"SIG{cfg.requeue_signal}":
        return False
    retry = "submit the job again with the same command: --resume auto continues the run"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        warn(f"could not requeue SLURM job {job} ({type(exc).__name__}: {exc}); {retry}")
        return False
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
        warn(f"scontrol requeue {job} failed ({detail}); {retry}")
        return False
    echo(f"requeued SLURM job {job}: it continues from this checkpoint")
    return True
