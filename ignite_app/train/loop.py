"""``train(cfg)``: build the run, resume it if asked, open its directory, train, and say how it ended."""

from __future__ import annotations

import sys
from typing import Callable

from ignite import distributed as idist
from ignite.engine import Engine, Events

from ignite_app.config import Config, default_of, save_yaml
from ignite_app.data.splits import MIN_BATCHES
from ignite_app.data.streams import size_text
from ignite_app.errors import EXIT_OK
from ignite_app.models.normalize import model_name
from ignite_app.io import checkpoint as ckpt
from ignite_app.train.build import Echo, Run, build_evaluation, build_run, pick_device
from ignite_app.train.distributed import agreed_stop_reason, fail_together, in_process_group
from ignite_app.train.handlers import StopSignal, attach_stop
from ignite_app.train.metrics import attach_table_logging
from ignite_app.train.requeue import requeue_after_stop, requeue_signal_number, stop_exit_code
from ignite_app.train.resume import Resumed, clean_stale_saves, restore
from ignite_app.train.trackers import start_trackers
from ignite_app.train.tblog import (
    TensorboardLogger, attach_epoch_stats, attach_tensorboard, log_config, log_hparams, open_tensorboard,
)


def train(cfg: Config, echo: Echo = print, warn: Echo | None = None, prepare: Callable[[Run], None] | None = None) -> int:
    """Train as ``cfg`` says; returns the process exit code.

    ``prepare(run)`` runs once the run is open, before training: ``tune`` attaches its pruning there.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if idist.get_rank() != 0:  # only rank 0 prints
        echo = warn = _silent
    with fail_together():
        device = pick_device(cfg)
    run = build_run(cfg, device, echo)
    resumed = restore(run, warn) if cfg.resume else None
    if resumed is not None and resumed.finished_message:
        echo(resumed.finished_message)
        return EXIT_OK
    if resumed is not None:
        resumed.apply()  # before anything on disk changes: a part that does not load leaves the run untouched
        if run.is_writer:
            clean_stale_saves(run, resumed, warn)
    stop = StopSignal(cfg.time_limit, requeue_signal=requeue_signal_number(cfg))  # issue 17: + --requeue-signal
    stop.install()
    try:
        open_run(run, stop, echo, resumed, warn)
        if prepare is not None:  # issue 14: after open_run, so its handlers follow the epoch-end checkpoint
            prepare(run)
        run.trainer.run(run.train_loader, max_epochs=cfg.epochs, epoch_length=run.epoch_length)
        if run.tb_logger is not None and run.evaluator.state.metrics:
            log_hparams(run.tb_logger, cfg, final_metrics(run), run.trainer.state.iteration)
            if run.trackers is not None:  # issue 14
                run.trackers.log_final(final_metrics(run), run.trainer.state.iteration)
    finally:
        try:
            close_run(run)  # waits for checkpoint writes in flight: a second Ctrl-C must still exit at once
        finally:
            stop.uninstall()
    return finish(run, stop, echo)


def open_run(run: Run, stop: StopSignal, echo: Echo, resumed: Resumed | None = None, warn: Echo | None = None) -> None:
    """Write the run directory, open TensorBoard, attach checkpointing: then ``run.trainer.run`` trains.

    ``train`` calls it between building and running; scripts/bench.py too, to time exactly this run.
    """
    with fail_together():  # issue 14: first, so that a tracker that cannot be reached stops every rank, writing nothing
        if run.is_writer:
            run.trackers = start_trackers(run.cfg, run.run_dir, run.trainer, run.evaluator, run.optimizer, warn or _stderr)
    if run.is_writer:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(run.cfg, run.run_dir / "config.yaml")
        run.tb_logger = start_tensorboard(run, resumed)
    attach_checkpoint_saving(run, stop)
    announce(run, echo, resumed)


def close_run(run: Run) -> None:
    """Finish the checkpoint writes in flight (raising a failed one), then close TensorBoard."""
    try:
        if run.train_checkpoint is not None:
            run.train_checkpoint.save_handler.close()
    finally:
        if run.tb_logger is not None:
            run.tb_logger.close()
        if run.trackers is not None:  # issue 14: after the saver, so the best checkpoint is whole on disk
            run.trackers.close(ckpt.best_checkpoint(run.run_dir))


def start_tensorboard(run: Run, resumed: Resumed | None) -> TensorboardLogger:
    """Open the run's TensorBoard log and attach its handlers; a fresh run also logs its config."""
    tb = open_tensorboard(run.run_dir, purge_step=resumed.purge_step if resumed else None)
    attach_tensorboard(tb, run.trainer, run.evaluator, run.optimizer, run.cfg)
    attach_table_logging(tb, run.trainer, run.evaluator)  # issue 12: the confusion matrix, as text
    attach_epoch_stats(tb, run.trainer, lambda: len(run.train_sampler) * idist.get_world_size(), run.device)
    if resumed is None:
        log_config(tb, run.cfg)
    return tb


def final_metrics(run: Run) -> dict[str, float]:
    """What the HParams tab shows: the last validation metrics, the best validation loss, the epochs done."""
    metrics = {f"val_{name}": float(value) for name, value in run.evaluator.state.metrics.items()}
    saved = run.best_checkpoint.state_dict()["_saved"]  # [(priority, filename)], priority = the monitor's score
    if saved and run.monitor is not None:
        metrics["best_" + run.monitor.monitor.replace("/", "_")] = run.monitor.sign * float(saved[-1][0])
    if "train_loss" in run.trainer.state.metrics:
        metrics["train_loss"] = float(run.trainer.state.metrics["train_loss"])
    metrics["epochs"] = float(run.trainer.state.epoch)
    return metrics


def _silent(msg: str) -> None:
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def attach_checkpoint_saving(run: Run, stop: StopSignal) -> None:
    """Save at every EPOCH_COMPLETED (after validation) and when a stop is requested mid-epoch."""

    def save(engine: Engine) -> None:
        run.tracker.check(engine)  # never save weights that a non-finite loss has touched
        if run.tb_logger is not None:
            run.tb_logger.writer.flush()  # events up to this step must survive a kill
        run.train_checkpoint(engine)

    def save_at_epoch_end(engine: Engine) -> None:
        save(engine)
        if agree_to_stop(stop):
            engine.terminate()

    run.trainer.add_event_handler(Events.EPOCH_COMPLETED, save_at_epoch_end)
    attach_mid_epoch_stop(run, stop, save)


def attach_mid_epoch_stop(run: Run, stop: StopSignal, save: Callable[[Engine], None]) -> None:
    """Stop mid-epoch, with a save, where a stop can have been requested; free until then in one process.

    In one process the check is attached only when a signal or the time limit arrives: a handler
    appended while an iteration runs still runs in that iteration's ITERATION_COMPLETED pass, so a
    signal stops the run at the iteration it landed in, as before. Several processes must agree through
    an all-reduce, a host sync on GPUs and a round trip on CPUs: every --log-every iterations.
    """
    def should_stop() -> bool:
        return not at_epoch_end(run.trainer) and agree_to_stop(stop)

    if in_process_group():
        attach_stop(run.trainer, should_stop, save, every=run.cfg.log_every)
    else:
        stop.when_requested(lambda: attach_stop(run.trainer, should_stop, save))


def at_epoch_end(engine: Engine) -> bool:
    """Whether the iteration just done is its epoch's last.

    A stop there waits for EPOCH_COMPLETED (validation, best model, early stopping, the epoch-end
    save): terminating now would skip them, and a resumed run would never validate that epoch.
    """
    return engine.state.iteration % engine.state.epoch_length == 0


def agree_to_stop(stop: StopSignal) -> bool:
    """Whether any process was asked to stop: a collective under torchrun (every rank must call it at the same
    iteration, and all get the same answer); a plain check in one process."""
    return agreed_stop_reason(stop.reason()) is not None


def announce(run: Run, echo: Echo, resumed: Resumed | None) -> None:
    """Say what is about to run."""
    if not run.is_writer:
        return
    spec = run.splits.spec
    world = idist.get_world_size()
    batch = f"batch {run.cfg.batch_size}" + (f" per process, global batch {run.cfg.batch_size * world}" if world > 1 else "")
    if run.cfg.auto_batch and run.cfg.batch_size != default_of("batch_size"):  # picked for small data
        batch += f" (not {default_of('batch_size')}: too few training rows for {MIN_BATCHES} batches per epoch; --batch-size sets it)"
    data = f"{run.splits.preprocess.describe()}, " if run.splits.preprocess is not None else ""
    test = f" / {len(run.splits.test)} test" if run.splits.test is not None else ""
    echo(f"{spec.task} on {run.cfg.dataset}: {data}{size_text(run.splits.train)} train / {size_text(run.splits.val)} val{test} samples, "
         f"model {model_name(run.to_save['model'])}, device {run.device}, {batch}, processes {world}")
    for note in run.notes:
        echo(note)
    if run.init_report is not None:  # issue 12
        echo(run.init_report.line())
    if resumed is not None and resumed.state:
        echo(f"resuming from {resumed.path} (iteration {resumed.state['trainer']['iteration']})")
    echo(f"writing to {run.run_dir}")


def finish(run: Run, stop: StopSignal, echo: Echo) -> int:
    """Report how the run ended and return its exit code."""
    state = run.trainer.state
    reason = agreed_stop_reason(stop.reason())
    last = run.train_checkpoint.last_checkpoint if run.train_checkpoint is not None else None
    where = f"; checkpoint {run.run_dir / ckpt.CHECKPOINT_DIR / last}" if last else ""  # this run's, not any newer file
    if reason is not None:
        if run.is_writer:
            echo(f"stopped by {reason} at iteration {state.iteration} (epoch {state.epoch}){where}; "
                 f"continue with: ignite-app train --resume {run.run_dir}")
            requeue_after_stop(run.cfg, reason, echo)  # issue 17: the checkpoint is on disk (close_run waited for it)
        return stop_exit_code(reason)
    if run.is_writer:
        if run.stopper is not None and run.stopper.counter >= run.cfg.patience:
            what = "validation loss" if run.cfg.monitor == "val/loss" else run.cfg.monitor
            echo(f"early stopping at epoch {state.epoch}: {what} did not improve for {run.cfg.patience} epochs")
        best = ckpt.best_checkpoint(run.run_dir)
        echo(f"done: {state.epoch} epoch(s){where}" + (f"; best model {best}" if best else ""))
    if run.splits.test is not None:
        report_test(run, echo)  # every process evaluates (Ignite's metrics sync across them); rank 0 prints
    return EXIT_OK


def report_test(run: Run, echo: Echo) -> None:
    """The run's last line: the best model's metrics on --test-dataset."""
    if in_process_group():
        idist.barrier()  # rank 0 has finished writing the best model (close_run) before any process reads it
    best = ckpt.best_checkpoint(run.run_dir)
    if best is None:
        return
    run.raw_model.load_state_dict(ckpt.read_checkpoint(best)["model"])  # training is over: the best weights
    evaluator, loader = build_evaluation(run.cfg, run.raw_model, run.splits.spec, run.splits.test, run.device,
                                         run.splits.preprocess)
    evaluator.run(loader)
    values = "  ".join(f"{name} {float(value):.4f}" for name, value in evaluator.state.metrics.items())
    if run.is_writer:
        echo(f"test ({len(run.splits.test)} samples, best model {best.name}): {values}")
