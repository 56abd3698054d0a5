"""Resume: pick the newest checkpoint that verifies, check it against the built run, then load it.

Nothing changes (on disk or in the run) until every part of the checkpoint was checked; only then does
:meth:`Resumed.apply` load it, and :func:`clean_stale_saves` remove what interrupted saves left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite import distributed as idist
from ignite.handlers import Checkpoint

from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.train.build import Echo, Run
from ignite_app.train.distributed import fail_together, from_rank_zero


@dataclass
class Resumed:
    """A verified checkpoint, ready to be applied to a built run."""

    path: Path
    state: dict[str, Any]
    to_load: dict[str, Any]
    purge_step: int
    finished_message: str | None = None

    def apply(self) -> None:
        """Load every object from the checkpoint (RNG last)."""
        if not self.to_load:
            return
        try:
            Checkpoint.load_objects(to_load=self.to_load, checkpoint=self.state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise ckpt.CheckpointError(
                f"{self.path}: does not load into this run ({type(exc).__name__}: {str(exc)[:200]}); "
                "resume from an older checkpoint file of this run"
            ) from None


def restore(run: Run, warn: Echo) -> Resumed | None:
    """Rank 0 picks the newest checkpoint that verifies, every other rank checks that same file; changes nothing yet."""
    picked: dict[str, Resumed] = {}

    def pick() -> str:
        picked["resumed"] = pick_checkpoint(run, warn)
        return str(picked["resumed"].path) if picked["resumed"].state else ""

    path = from_rank_zero(pick)
    with fail_together():
        resumed = picked.get("resumed") or (verify_for_run(run, Path(path)) if path else fresh_start(run))
    return resumed


def fresh_start(run: Run) -> Resumed:
    """A resume of a run directory that holds no checkpoint yet: train it from the beginning."""
    return Resumed(path=run.run_dir, state={}, to_load={}, purge_step=1)


def pick_checkpoint(run: Run, warn: Echo) -> Resumed:
    """Remove stale temporary files, then verify the candidates newest first; the first that passes wins."""
    resume = Path(run.cfg.resume)
    candidates = [resume] if resume.is_file() else ckpt.train_checkpoints(run.run_dir)
    if not candidates:
        warn(f"{run.run_dir} has no checkpoint yet: training it from the beginning")
        return fresh_start(run)
    problems = []
    for path in candidates:
        try:
            resumed = verify_for_run(run, path)
        except ckpt.CheckpointError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:  # worth a warning only when an older checkpoint is used instead
            warn(f"skipping checkpoint: {problem}")
        return resumed
    raise UserError(f"no usable checkpoint in {run.run_dir}: " + "; ".join(problems))


def clean_stale_saves(run: Run, resumed: Resumed, warn: Echo) -> None:
    """Once a checkpoint is accepted and loaded (rank 0), remove what interrupted saves left behind.

    That is the temporary files of saves that never finished, and files that had left the kept set
    when the accepted checkpoint was written (a kill came before their deferred removal). Checkpoints
    newer than the accepted one (a deliberate roll-back) are moved aside, never deleted.
    """
    for stale in ckpt.clean_temporaries(run.run_dir):
        warn(f"removed stale temporary file {stale}")
    for moved in ckpt.set_aside_newer(run.run_dir, resumed.purge_step - 1):
        warn(f"moved {moved.name} to {moved.parent}: it is newer than {resumed.path.name}, which this run continues from")
    kept = {name for handler in (run.train_checkpoint, run.best_checkpoint) for _, name in handler.state_dict()["_saved"]}
    for path in ckpt.remove_evicted(run.run_dir, kept, upto=resumed.purge_step - 1):
        warn(f"removed {path}: it had left the kept set (--n-saved) before a kill interrupted its removal")


def verify_for_run(run: Run, path: Path) -> Resumed:
    """Load ``path`` safely and check every part against the live objects."""
    state = ckpt.read_checkpoint(path, require_checksum=False, max_bytes=ckpt.size_bound(run.raw_model))
    ckpt.require_keys(state, ckpt.REQUIRED_KEYS, path)
    ckpt.check_model_state(run.to_save["model"], state["model"], path)
    ckpt.check_optimizer_state(run.optimizer, state["optimizer"], path)
    check_global_batch(run, state.get("meta") or {}, path)
    trainer_state = dict(state["trainer"])
    if trainer_state.get("epoch_length") != run.epoch_length:
        raise ckpt.CheckpointError(
            f"{path}: saved with {trainer_state.get('epoch_length')} iterations per epoch, this run has {run.epoch_length} "
            "(the data, batch size or number of processes changed)"
        )
    if "preprocess" in run.to_save and "preprocess" not in state and run.cfg.dataset != "digits":  # issue 11
        raise ckpt.CheckpointError(f"{path}: written before preprocessing was stored with the model, so it was trained on "
                                   "differently prepared data; start a new run with --output-dir")
    for key in ("scaler", "grads", "ema"):
        if (key in run.to_save) != (key in state):
            raise ckpt.CheckpointError(f"{path}: checkpoint and run disagree on {key} state (--amp, --grad-accum or --ema-decay changed)")
    if "ema" in state:  # issue 12: the moving average must fit the model as the weights do
        ckpt.check_model_state(run.to_save["ema"], state["ema"], path)
    iteration = int(trainer_state.get("iteration", 0))
    trainer_state["max_epochs"] = max(run.cfg.epochs, iteration // run.epoch_length)
    state = {**state, "trainer": trainer_state}
    to_load = {k: v for k, v in run.to_save.items() if k in state and k != "meta"}
    if "checkpointer" in state:  # the train checkpointer's own bookkeeping: which files it keeps
        to_load["checkpointer"] = run.train_checkpoint
    return Resumed(path=path, state=state, to_load=to_load, purge_step=iteration + 1,
                   finished_message=finished_message(run, state, iteration))


def check_global_batch(run: Run, meta: dict[str, Any], path: Path) -> None:
    """The global batch (processes x --batch-size) cannot change on resume; how it is split can."""
    if "world_size" not in meta or "batch_size" not in meta:
        return  # the epoch-length check still applies
    saved_world, saved_batch = int(meta["world_size"]), int(meta["batch_size"])
    world, batch = idist.get_world_size(), run.cfg.batch_size
    total = saved_world * saved_batch
    if world * batch == total:
        return
    fix = f"resume with --batch-size {total // world}" if total % world == 0 else f"resume with a number of processes that divides {total}"
    raise UserError(
        f"--batch-size cannot change when resuming: {path} was trained with a global batch of {total} "
        f"({saved_world} process(es) x {saved_batch}), this run would use {world * batch} ({world} x {batch}); {fix}"
    )


def finished_message(run: Run, state: dict[str, Any], iteration: int) -> str | None:
    """Why there is nothing left to train, or None."""
    epochs_done = iteration // run.epoch_length
    if iteration >= run.cfg.epochs * run.epoch_length:
        return (f"{run.run_dir} already completed {epochs_done} epoch(s) (--epochs {run.cfg.epochs}); "
                "nothing to do: raise --epochs to train further")
    stopped = state.get("early_stopping")
    if run.stopper is not None and stopped and int(stopped.get("counter", 0)) >= run.cfg.patience:
        return (f"{run.run_dir} was stopped early at epoch {epochs_done} (no improvement for "
                f"{stopped['counter']} epochs); nothing to do: raise --patience to train further")
    return None
