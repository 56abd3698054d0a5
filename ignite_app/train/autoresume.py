"""``--resume auto``: one command line for the first attempt of a run and every retry.

A launcher that reruns the same command (a SLURM requeue, torchrun's elastic restarts, a Kubernetes
Job, a cron retry) continues the run in ``--output-dir`` when it holds one, starts it when the
directory is empty or absent, and is refused when the directory holds anything else.
Under torchrun or srun every rank then takes the configuration that rank 0 resolved, so no rank
starts fresh while another resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ignite_app.config import Config, build_config, changed_fixed_key
from ignite_app.errors import UserError
from ignite_app.io.atomic import TMP_SUFFIX, remove_stale_temporaries
from ignite_app.io.lock import LOCK_FILE
from ignite_app.io.paths import is_run_dir, run_config
from ignite_app.train.distributed import from_rank_zero, in_process_group

def auto_resume_dir(asked: Config) -> str | None:
    """The run directory to continue, or None to start the run there; refuses a directory that holds another run.

    ``asked`` is the configuration of the command line alone (without the saved run's values).
    """
    if asked.output_dir is None:
        raise UserError("--resume auto needs --output-dir: the directory where every attempt finds the run; add --output-dir DIR")
    out = Path(asked.output_dir)
    if out.is_dir() and interrupted_start(out):
        remove_stale_temporaries(out)  # nothing of the run was written yet: start it (a live holder of the lock
        return None                    # refuses the start when the directory is claimed)
    if not out.is_dir() or not any(out.iterdir()):
        return None  # a new run; a path that is a file is refused when the directory is claimed
    if not is_run_dir(out):
        raise UserError(
            f"--resume auto: {out} holds files but no config.yaml, so it is not a run of ignite-app; "
            "choose another --output-dir"
        )
    check_same_run(out, asked)
    return str(out)


def interrupted_start(out: Path) -> bool:
    """Whether ``out`` holds only what a first attempt stopped before config.yaml leaves: the run-directory lock
    (taken before the data loads, which can take minutes) and a temporary config.yaml being written."""
    entries = list(out.iterdir())
    return bool(entries) and all(
        (p.name == LOCK_FILE and p.is_file()) or (p.name.startswith(".config.yaml.") and p.name.endswith(TMP_SUFFIX))
        for p in entries)


def check_same_run(run_dir: Path, asked: Config) -> None:
    """Refuse a run whose saved config computes something else than ``asked`` (the keys that cannot change on resume)."""
    saved = run_config(run_dir)
    key = changed_fixed_key(saved, asked)
    if key is not None:
        raise UserError(
            f"--resume auto: {run_dir} holds a run of another configuration (--{key.replace('_', '-')} "
            f"{getattr(saved, key)!r} there, {getattr(asked, key)!r} asked); rerun it with its own options "
            "or choose another --output-dir"
        )


def follow_rank_zero(cfg: Config) -> Config:
    """Under torchrun or srun, the configuration rank 0 resolved, on every rank (a collective); else ``cfg``.

    Each rank resolved the command line before the process group existed; on a filesystem that not
    every node shares they could disagree on whether the run exists, so rank 0's decision wins.
    """
    if not in_process_group():
        return cfg
    decided = json.loads(from_rank_zero(lambda: json.dumps({**cfg.to_dict(), "resume": cfg.resume})))
    return build_config(decided, {})
