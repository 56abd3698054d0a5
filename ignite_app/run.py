"""``train(cfg)``: the short, top-to-bottom wiring of data, model, engines and handlers."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine

from ignite_app import checkpoint as ckpt
from ignite_app.config import Config, save_yaml
from ignite_app.data import Splits, load_splits
from ignite_app.devices import resolve_device
from ignite_app.distributed import (
    PerRankState, agreed_stop_reason, fail_together, from_rank_zero, in_process_group, local_device, mean_over_processes,
)
from ignite_app.engines import add_gradient_clipping, build_evaluator, build_trainer, make_scaler
from ignite_app.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, UserError
from ignite_app.handlers import (
    LossTracker, StopSignal, attach_early_stopping, attach_epoch_summary, attach_loss_tracker, attach_stop,
    attach_validation,
)
from ignite_app.loaders import EpochSampler, epoch_length, make_loader
from ignite_app.models import build_model, check_model_fits
from ignite_app.tblog import attach_epoch_stats, attach_tensorboard, log_config, log_hparams, open_tensorboard

Echo = Callable[[str], None]


@dataclass
class Run:
    """Everything one training run is made of, built by :func:`build_run`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    splits: Splits
    model: torch.nn.Module  # what the engines call (maybe DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    train_loader: Any
    val_loader: Any
    train_sampler: EpochSampler
    epoch_length: int
    to_save: dict[str, Any]
    tracker: LossTracker
    scheduler: Any = None
    stopper: Any = None
    train_checkpoint: Any = None
    best_checkpoint: Any = None
    tb_logger: Any = None

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files and prints progress."""
        return idist.get_rank() == 0


def train(cfg: Config, echo: Echo = print, warn: Echo | None = None) -> int:
    """Train as ``cfg`` says; returns the process exit code."""
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
    stop = StopSignal(cfg.time_limit)
    stop.install()
    try:
        open_run(run, stop, echo, resumed)
        run.trainer.run(run.train_loader, max_epochs=cfg.epochs, epoch_length=run.epoch_length)
        if run.tb_logger is not None and run.evaluator.state.metrics:
            log_hparams(run.tb_logger, cfg, final_metrics(run), run.trainer.state.iteration)
    finally:
        try:
            close_run(run)  # waits for checkpoint writes in flight: a second Ctrl-C must still exit at once
        finally:
            stop.uninstall()
    return finish(run, stop, echo)


def open_run(run: Run, stop: StopSignal, echo: Echo, resumed: Resumed | None = None) -> None:
    """Write the run directory, open TensorBoard, attach checkpointing: then ``run.trainer.run`` trains.

    ``train`` calls it between building and running; scripts/bench.py too, to time exactly this run.
    """
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


def start_tensorboard(run: Run, resumed: Resumed | None) -> Any:
    """Open the run's TensorBoard log and attach its handlers; a fresh run also logs its config."""
    tb = open_tensorboard(run.run_dir, purge_step=resumed.purge_step if resumed else None)
    attach_tensorboard(tb, run.trainer, run.evaluator, run.optimizer, run.cfg)
    attach_epoch_stats(tb, run.trainer, lambda: len(run.train_sampler) * idist.get_world_size(), run.device)
    if resumed is None:
        log_config(tb, run.cfg)
    return tb


def final_metrics(run: Run) -> dict[str, float]:
    """What the HParams tab shows: the last validation metrics, the best validation loss, the epochs done."""
    metrics = {f"val_{name}": float(value) for name, value in run.evaluator.state.metrics.items()}
    saved = run.best_checkpoint.state_dict()["_saved"]  # [(priority, filename)], priority = -val_loss
    if saved:
        metrics["best_val_loss"] = -float(saved[-1][0])
    if "train_loss" in run.trainer.state.metrics:
        metrics["train_loss"] = float(run.trainer.state.metrics["train_loss"])
    metrics["epochs"] = float(run.trainer.state.epoch)
    return metrics


def _silent(msg: str) -> None:
    pass


def pick_device(cfg: Config) -> torch.device:
    """The device for this process: ``--device``; under torchrun or srun, the GPU of its local rank."""
    device = resolve_device(cfg.device)
    if in_process_group():
        device = local_device(device, cfg.device, idist.get_local_rank(), torch.cuda.device_count())
    if cfg.cuda_graph and device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device, not {device}: pass --device cuda:0, or drop --cuda-graph")
    if cfg.cuda_graph and in_process_group():
        raise UserError("--cuda-graph runs in one process only: drop --cuda-graph under torchrun or srun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every global RNG; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: ops with no deterministic CUDA kernel (AdaptiveAvgPool2d backward, NLLLoss) warn, not fail
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_run(cfg: Config, device: torch.device, echo: Echo = print) -> Run:
    """Data, model, optimizer, engines and handlers for ``cfg``; writes nothing to disk."""
    seed_everything(cfg.seed + idist.get_rank(), cfg.deterministic)  # own dropout per rank; DDP copies rank 0's weights
    with fail_together():  # bad data or a bad model fails every rank at once, before DDP's first collective
        splits = load_splits(cfg)
        raw_model = build_model(cfg.model, splits.spec).to(device)
        if cfg.channels_last:
            raw_model = raw_model.to(memory_format=torch.channels_last)
        train_sampler, val_sampler = make_samplers(cfg, splits)
        train_loader = make_loader(splits.train, cfg.batch_size, train_sampler, in_memory=cfg.in_memory,
                                   num_workers=cfg.num_workers, device=device, seed=cfg.seed)
        val_loader = make_loader(splits.val, cfg.batch_size, val_sampler, in_memory=cfg.in_memory,
                                 num_workers=cfg.num_workers, device=device, seed=cfg.seed)
        check_model_fits(raw_model, splits.spec, sample_batch(splits, device))
        optimizer = make_optimizer(cfg, raw_model)
        if cfg.clip_grad_norm is not None:
            add_gradient_clipping(optimizer, cfg.clip_grad_norm)
    model = wrap_model(raw_model, device, cfg.compile, cfg.compile_mode)
    scaler = make_scaler(device, cfg.amp)
    trainer = build_trainer(model, optimizer, splits.spec.task, device, amp=cfg.amp,
                            channels_last=cfg.channels_last, grad_accum=cfg.grad_accum, scaler=scaler,
                            graph_batch_size=cfg.batch_size if cfg.cuda_graph else None)
    evaluator = build_evaluator(model, splits.spec.task, device, amp=cfg.amp, channels_last=cfg.channels_last)
    length = epoch_length(train_sampler, cfg.batch_size)
    tracker = LossTracker(cfg.log_every)
    run = Run(cfg=cfg, run_dir=Path(cfg.output_dir or "."), device=device, splits=splits, model=model,
              optimizer=optimizer, trainer=trainer, evaluator=evaluator, train_loader=train_loader,
              val_loader=val_loader, train_sampler=train_sampler, epoch_length=length, to_save={}, tracker=tracker)
    attach_training_handlers(run, raw_model, scaler, echo)
    return run


def make_samplers(cfg: Config, splits: Splits) -> tuple[EpochSampler, EpochSampler]:
    """Training order from (seed, epoch), sharded over processes; validation in order, unpadded."""
    rank, world = idist.get_rank(), idist.get_world_size()
    train = EpochSampler(len(splits.train), cfg.seed, shuffle=True, rank=rank, world_size=world, pad=True)
    val = EpochSampler(len(splits.val), cfg.seed, shuffle=False, rank=rank, world_size=world, pad=False)
    return train, val


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model's parameters; Adam and AdamW use torch's fused kernel where it runs."""
    params = list(model.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    adam = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=can_fuse(params) or None)


def can_fuse(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused Adam kernel takes these parameters: one kernel per step instead of ~10 ops per
    tensor, the same update (up to float rounding) in ~20% less time for a small MLP's CPU epoch."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def wrap_model(model: torch.nn.Module, device: torch.device, compile_model: bool, mode: str = "default") -> torch.nn.Module:
    """DDP in a process group (never DataParallel), then torch.compile if asked."""
    if in_process_group():
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_model:
        model = torch.compile(model, mode=mode)
    return model


def sample_batch(splits: Splits, device: torch.device) -> torch.Tensor:
    """Two copies of the first training sample, to check that the model fits the data."""
    x = splits.train[0][0]
    return torch.as_tensor(x).unsqueeze(0).expand(2, *torch.as_tensor(x).shape).to(device)


def attach_training_handlers(run: Run, raw_model: torch.nn.Module, scaler: Any, echo: Echo) -> None:
    """Order matters at EPOCH_COMPLETED: loss check, validation, summary line, then the checkpoint."""
    cfg, trainer, evaluator = run.cfg, run.trainer, run.evaluator
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: set_epoch_order(e, run.train_sampler, cfg.batch_size))
    attach_loss_tracker(trainer, run.tracker)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, average_train_loss)
    if cfg.lr_schedule == "cosine":
        run.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(run.optimizer, T_max=cfg.epochs * run.epoch_length)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: run.scheduler.step())
    if run.is_writer and _progress_wanted(cfg):
        from ignite_app.tblog import attach_progress_bar

        attach_progress_bar(trainer, cfg.log_every)  # before validation: the bar is gone before the epoch line
    attach_validation(trainer, evaluator, run.val_loader)
    if cfg.patience > 0:
        run.stopper = attach_early_stopping(trainer, evaluator, cfg.patience)
    if run.is_writer:
        attach_epoch_summary(trainer, evaluator, echo)
    # Written on a worker thread: an epoch does not wait for the fsyncs (20 ms and more per file on some disks).
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(run.run_dir / ckpt.CHECKPOINT_DIR, write=run.is_writer))
    meta = ckpt.Meta({"model_class": type(raw_model).__name__, "task": run.splits.spec.task,
                      "num_outputs": run.splits.spec.num_outputs, "input_shape": list(run.splits.spec.input_shape),
                      "world_size": idist.get_world_size(), "batch_size": cfg.batch_size})
    run.best_checkpoint = ckpt.make_best_checkpoint(raw_model, meta, saver, global_step_from_engine(trainer, Events.ITERATION_COMPLETED))
    evaluator.add_event_handler(Events.COMPLETED, run.best_checkpoint)
    run.to_save = {"model": raw_model, "optimizer": run.optimizer, "trainer": trainer, "meta": meta,
                   "loss_tracker": PerRankState(run.tracker), "best_checkpointer": run.best_checkpoint}
    optional = {"lr_scheduler": run.scheduler, "early_stopping": run.stopper, "scaler": scaler,
                "grads": ckpt.GradState(raw_model) if cfg.grad_accum > 1 else None}
    run.to_save.update({k: v for k, v in optional.items() if v is not None})
    run.to_save["rng"] = PerRankState(ckpt.RNGState())  # last: restored after everything else
    run.train_checkpoint = ckpt.make_train_checkpoint(run.to_save, saver, cfg.n_saved)


def average_train_loss(engine: Engine) -> None:
    """EPOCH_COMPLETED: the epoch's training loss over all processes (each ran the same number of batches)."""
    engine.state.metrics["train_loss"] = mean_over_processes(engine.state.metrics["train_loss"])


def _progress_wanted(cfg: Config) -> bool:
    return cfg.progress if cfg.progress is not None else sys.stderr.isatty()


def set_epoch_order(engine: Engine, sampler: EpochSampler, batch_size: int) -> None:
    """EPOCH_STARTED: this epoch's order; after a mid-epoch resume, skip the batches already done."""
    done = engine.state.iteration - (engine.state.epoch - 1) * engine.state.epoch_length
    sampler.set_epoch(engine.state.epoch - 1, start=done * batch_size)


def attach_checkpoint_saving(run: Run, stop: StopSignal) -> None:
    """Save at every EPOCH_COMPLETED (after validation) and when a stop is requested mid-epoch."""

    def save(engine: Engine) -> None:
        run.tracker.check(engine)  # never save weights that a non-finite loss has touched
        if run.tb_logger is not None:
            run.tb_logger.writer.flush()  # events up to this step must survive a kill
        run.train_checkpoint(engine)

    def save_at_epoch_end(engine: Engine) -> None:
        save(engine)
        if stop_requested(stop):
            engine.terminate()

    run.trainer.add_event_handler(Events.EPOCH_COMPLETED, save_at_epoch_end)
    # Several processes agree through an all-reduce: on GPUs a host sync, so only every --log-every iterations.
    every = run.cfg.log_every if in_process_group() and run.device.type == "cuda" else 1
    attach_stop(run.trainer, lambda: not at_epoch_end(run.trainer) and stop_requested(stop), save, every=every)


def at_epoch_end(engine: Engine) -> bool:
    """Whether the iteration just done is its epoch's last.

    A stop there waits for EPOCH_COMPLETED (validation, best model, early stopping, the epoch-end
    save): terminating now would skip them, and a resumed run would never validate that epoch.
    """
    return engine.state.iteration % engine.state.epoch_length == 0


def stop_requested(stop: StopSignal) -> bool:
    """Whether any process was asked to stop; all ranks agree on the same iteration."""
    return agreed_stop_reason(stop.reason()) is not None


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
        from ignite.handlers import Checkpoint

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
    when the accepted checkpoint was written (a kill came before their deferred removal).
    """
    for stale in ckpt.clean_temporaries(run.run_dir):
        warn(f"removed stale temporary file {stale}")
    kept = {name for handler in (run.train_checkpoint, run.best_checkpoint) for _, name in handler.state_dict()["_saved"]}
    for path in ckpt.remove_evicted(run.run_dir, kept, upto=resumed.purge_step - 1):
        warn(f"removed {path}: it had left the kept set (--n-saved) before a kill interrupted its removal")


def verify_for_run(run: Run, path: Path) -> Resumed:
    """Load ``path`` safely and check every part against the live objects."""
    state = ckpt.read_checkpoint(path, require_checksum=False)
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
    for key in ("scaler", "grads"):
        if (key in run.to_save) != (key in state):
            raise ckpt.CheckpointError(f"{path}: checkpoint and run disagree on {key} state (--amp or --grad-accum changed)")
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


def announce(run: Run, echo: Echo, resumed: Resumed | None) -> None:
    """Say what is about to run."""
    if not run.is_writer:
        return
    spec = run.splits.spec
    world = idist.get_world_size()
    batch = f"batch {run.cfg.batch_size}" + (f" per process, global batch {run.cfg.batch_size * world}" if world > 1 else "")
    echo(f"{spec.task} on {run.cfg.dataset}: {len(run.splits.train)} train / {len(run.splits.val)} val samples, "
         f"model {type(run.to_save['model']).__name__}, device {run.device}, {batch}, processes {world}")
    if resumed is not None and resumed.state:
        echo(f"resuming from {resumed.path} (iteration {resumed.state['trainer']['iteration']})")
    echo(f"writing to {run.run_dir}")


def finish(run: Run, stop: StopSignal, echo: Echo) -> int:
    """Report how the run ended and return its exit code."""
    state = run.trainer.state
    reason = agreed_stop_reason(stop.reason())
    last = ckpt.train_checkpoints(run.run_dir)
    where = f"; checkpoint {last[0]}" if last else ""
    if reason is not None:
        if run.is_writer:
            echo(f"stopped by {reason} at iteration {state.iteration} (epoch {state.epoch}){where}; "
                 f"continue with: ignite-app train --resume {run.run_dir}")
        return {"SIGTERM": EXIT_SIGTERM, "SIGINT": EXIT_SIGINT}.get(reason, EXIT_OK)
    if run.is_writer:
        if run.stopper is not None and run.stopper.counter >= run.cfg.patience:
            echo(f"early stopping at epoch {state.epoch}: validation loss did not improve for {run.cfg.patience} epochs")
        best = ckpt.best_checkpoint(run.run_dir)
        echo(f"done: {state.epoch} epoch(s){where}" + (f"; best model {best}" if best else ""))
    return EXIT_OK
