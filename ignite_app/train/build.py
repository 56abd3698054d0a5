"""Build a run: the one path from a :class:`Config` to data, model, optimizer, engines and handlers.

:func:`build_pipeline` makes what computes (data, model, optimizer, trainer, evaluator); ``train``,
``lr-find``, ``scripts/bench.py`` and the tests all start from it, so an option that changes the model
or the step reaches every command. :func:`build_run` adds the training handlers and the checkpoint
objects. Nothing here writes to disk: :mod:`ignite_app.train.loop` opens the run directory.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EarlyStopping, global_step_from_engine
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.metrics import Metric
from torch.utils.data import DataLoader, Dataset

from ignite_app.config import Config, augmentations
from ignite_app.data.balance import (
    BalancedEpochSampler, check_classification, class_counts, inverse_frequency, training_labels,
)
from ignite_app.data.loaders import EpochSampler, InMemoryLoader, epoch_length, make_loader
from ignite_app.data.preprocess import Preprocessor
from ignite_app.data.select import load_splits  # issue 13: image folders, then the other sources
from ignite_app.data.sources import DataSpec, Splits
from ignite_app.data.splits import small_data_batch
from ignite_app.data.streams import Stream, nominal_size
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.models import build_model, check_model_fits
from ignite_app.models.init import InitReport, init_weights
from ignite_app.models.normalize import with_pixel_normalize
from ignite_app.train.devices import resolve_device
from ignite_app.train.distributed import PerRankState, fail_together, in_process_group, local_device, mean_over_processes
from ignite_app.train.ema import EMAHandler, attach_ema, evaluated_model, make_ema
from ignite_app.train.engines import add_gradient_clipping, build_evaluator, build_trainer, make_scaler
from ignite_app.train.handlers import (
    LossTracker, attach_early_stopping, attach_epoch_summary, attach_loss_tracker, attach_validation,
)
from ignite_app.train.metrics import Monitor, check_monitor, metrics_for
from ignite_app.train.schedules import attach_schedule, make_schedule, warmup_steps
from ignite_app.train.state import GradState, Meta, RNGState
from ignite_app.train.cudagraph import note_on_stderr, wants_cuda_graph
from ignite_app.train.tblog import attach_progress_bar
from ignite_app.train.threads import use_threads
from ignite_app.train.trackers import Trackers

Echo = Callable[[str], None]
Loader = InMemoryLoader | DataLoader
FEW_VAL_ROWS = 30  # early stopping on fewer validation rows than this gets a warning


@dataclass
class Pipeline:
    """What computes: the data, the model, its optimizer and the two engines, built by :func:`build_pipeline`."""

    cfg: Config
    device: torch.device
    splits: Splits
    raw_model: torch.nn.Module  # the bare module: what checkpoints hold
    model: torch.nn.Module  # what the engines call (maybe DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    trainer: Engine
    evaluator: Engine
    train_loader: Loader
    val_loader: Loader
    train_sampler: EpochSampler
    epoch_length: int
    notes: list[str] = field(default_factory=list)  # issue 11: what the data and the batch size decided
    ema: EMAHandler | None = None  # issue 12: the weights' moving average, which validation uses
    init_report: InitReport | None = None  # issue 12: what --init-weights loaded

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files and prints progress."""
        return idist.get_rank() == 0


@dataclass
class Run(Pipeline):
    """A :class:`Pipeline` with its training handlers and checkpoint objects, built by :func:`build_run`.

    ``tb_logger`` is the one part set later: :func:`ignite_app.train.loop.open_run` opens it with the run directory.
    """

    run_dir: Path = Path(".")
    tracker: LossTracker = field(default_factory=lambda: LossTracker(1))
    to_save: dict[str, Any] = field(default_factory=dict)
    train_checkpoint: Checkpoint | None = None
    best_checkpoint: Checkpoint | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    stopper: EarlyStopping | None = None
    tb_logger: TensorboardLogger | None = None
    trackers: Trackers | None = None  # issue 14: opened with TensorBoard
    # issue 12: the metric that decides
    monitor: Monitor | None = None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None


def pick_device(cfg: Config) -> torch.device:
    """The device for this process: ``--device``; under torchrun or srun, the GPU of its local rank."""
    device = resolve_device(cfg.device)
    if in_process_group():
        device = local_device(device, cfg.device, idist.get_local_rank(), torch.cuda.device_count())
    if cfg.cuda_graph and device.type != "cuda":  # set explicitly (None: automatic, see wants_cuda_graph)
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


def build_pipeline(cfg: Config, device: torch.device) -> Pipeline:
    """Data, model, optimizer and engines for ``cfg``: every option that changes the model or the step applies."""
    cfg = use_threads(cfg)  # issue 16: the resolved count is what config.yaml records
    seed_everything(cfg.seed + idist.get_rank(), cfg.deterministic)  # own dropout per rank; DDP copies rank 0's weights
    with fail_together():  # bad data or a bad model fails every rank at once, before DDP's first collective
        splits = load_splits(cfg)
        cfg, notes = fit_to_data(cfg, splits)
        cfg = resolve_class_weights(cfg, splits)
        raw_model = build_model(cfg.model, splits.spec, dict(cfg.model_args))
        init_report = init_weights(raw_model, cfg.init_weights) if cfg.init_weights and not cfg.resume else None
        raw_model = with_pixel_normalize(raw_model, splits).to(device)
        if cfg.channels_last:
            raw_model = raw_model.to(memory_format=torch.channels_last)
        train_sampler, val_sampler = make_samplers(cfg, splits)
        train_loader = with_augmentation(cfg, make_data_loader(cfg, splits.train, train_sampler, device), train_sampler, device)
        val_loader = make_data_loader(cfg.replace(batch_size=validation_batch_size(cfg.batch_size)), splits.val, val_sampler, device)
        check_model_fits(raw_model, splits.spec, sample_batch(splits, device))
        optimizer = make_optimizer(cfg, raw_model)
        metrics = validation_metrics(cfg, splits.spec, device, target_units(splits.preprocess, device))
        if cfg.clip_grad_norm is not None:
            add_gradient_clipping(optimizer, cfg.clip_grad_norm)
    model = wrap_model(raw_model, device, cfg.compile, cfg.compile_mode)
    ema = make_ema(raw_model, cfg.ema_decay)
    scaler = make_scaler(device, cfg.amp)
    graph = wants_cuda_graph(cfg, device, in_process_group())  # issue 16: on by default where it can record
    trainer = build_trainer(model, optimizer, splits.spec.task, device, amp=cfg.amp,
                            channels_last=cfg.channels_last, grad_accum=cfg.grad_accum, scaler=scaler,
                            graph_batch_size=cfg.batch_size if graph else None,
                            graph_fallback=note_on_stderr if cfg.cuda_graph is None else None,
                            class_weights=class_weight_tensor(cfg, device))
    evaluator = build_evaluator(evaluated_model(model, ema), splits.spec.task, device, amp=cfg.amp,
                                channels_last=cfg.channels_last, metrics=metrics)
    if ema is not None:
        attach_ema(ema, trainer, cfg.grad_accum)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: set_epoch_order(e, train_sampler, cfg.batch_size))
    return Pipeline(cfg=cfg, device=device, splits=splits, raw_model=raw_model, model=model, optimizer=optimizer,
                    scaler=scaler, trainer=trainer, evaluator=evaluator, train_loader=train_loader,
                    val_loader=val_loader, train_sampler=train_sampler,
                    epoch_length=epoch_length(train_sampler, cfg.batch_size), notes=notes, ema=ema,
                    init_report=init_report)


def fit_to_data(cfg: Config, splits: Splits) -> tuple[Config, list[str]]:
    """A smaller batch for small data (unless --batch-size was given), and the notes the run prints after its first line."""
    notes = list(splits.notes)
    if isinstance(splits.train, Stream):
        return cfg, notes  # a stream has no length: its epoch is --steps-per-epoch batches of --batch-size
    if cfg.auto_batch:
        cfg = cfg.replace(batch_size=small_data_batch(len(splits.train), cfg.batch_size, idist.get_world_size()))
    if cfg.patience > 0 and len(splits.val) < FEW_VAL_ROWS:
        notes.append(f"warning: early stopping watches only {len(splits.val)} validation rows, a noisy signal; "
                     "raise --val-fraction, give --val-dataset, or pass --patience 0")
    return cfg, notes


def target_units(preprocess: Preprocessor | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Standardised regression values back in the targets' own units (for the MAE), or None."""
    if preprocess is None or preprocess.task != "regression":
        return None
    shift, scale = preprocess.target_shift.to(device), preprocess.target_scale.to(device)
    return lambda values: values * scale + shift


def build_run(cfg: Config, device: torch.device, echo: Echo = print) -> Run:
    """:func:`build_pipeline` plus the training handlers and checkpoint objects; writes nothing to disk."""
    pipe = build_pipeline(cfg, device)
    run = Run(**vars(pipe), run_dir=Path(cfg.output_dir or "."), tracker=LossTracker(cfg.log_every))
    attach_training_handlers(run, echo)
    attach_checkpointers(run)
    if cfg.resume and isinstance(run.splits.train, Stream) and not run.splits.train.stateful:
        echo(f"{cfg.dataset} has no state_dict()/load_state_dict(): the data stream restarts from its beginning")
    return run


def validation_batch_size(batch_size: int) -> int:
    """Issue 16: validation keeps no activations for a backward pass, so it runs 4x the training batch (at most
    4096, never less than the training batch): fewer batches, so less of Ignite's per-batch event and metric work."""
    return max(batch_size, min(4 * batch_size, 4096))


def make_samplers(cfg: Config, splits: Splits) -> tuple[EpochSampler, EpochSampler]:
    """Training order from (seed, epoch), sharded over processes; validation in order, unpadded."""
    rank, world = idist.get_rank(), idist.get_world_size()
    size, val_size = (nominal_size(d, cfg.steps_per_epoch, cfg.batch_size, d is splits.train) for d in (splits.train, splits.val))
    train = EpochSampler(size, cfg.seed, shuffle=True, rank=rank, world_size=world, pad=True)
    val = EpochSampler(val_size, cfg.seed, shuffle=False, rank=rank, world_size=world, pad=False)
    if cfg.balanced_sampler:  # issue 12
        check_classification(splits.spec.task, "--balanced-sampler")
        train = BalancedEpochSampler(training_labels(splits.train), splits.spec.num_outputs, cfg.seed, rank, world)
    return train, val


def resolve_class_weights(cfg: Config, splits: Splits) -> Config:
    """``--class-weights auto`` becomes the training split's inverse class frequencies (saved in config.yaml)."""
    if cfg.class_weights == "none":
        return cfg
    check_classification(splits.spec.task, "--class-weights")
    if cfg.class_weights == "auto":
        counts = class_counts(training_labels(splits.train), splits.spec.num_outputs)
        return cfg.replace(class_weights=tuple(round(w, 6) for w in inverse_frequency(counts)))
    if len(cfg.class_weights) != splits.spec.num_outputs:
        raise UserError(f"class_weights has {len(cfg.class_weights)} weights, but the data has {splits.spec.num_outputs} "
                        "classes; give one per class or use auto")
    return cfg


def class_weight_tensor(cfg: Config, device: torch.device) -> torch.Tensor | None:
    """The training loss's per-class weights, or None."""
    if not isinstance(cfg.class_weights, tuple):
        return None
    return torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)


def make_data_loader(cfg: Config, data: Dataset, sampler: EpochSampler, device: torch.device) -> Loader:
    """The batches of ``data`` in ``sampler``'s order, as ``cfg`` asks (in memory or through a DataLoader)."""
    return make_loader(data, cfg.batch_size, sampler, in_memory=cfg.in_memory, num_workers=cfg.num_workers,
                       device=device, seed=cfg.seed, threads=cfg.threads)


def with_augmentation(cfg: Config, loader: Loader, sampler: EpochSampler, device: torch.device) -> Loader:
    """issue 13: the training batches augmented on ``device`` as ``--augment`` asks (unchanged when off)."""
    names = augmentations(cfg.augment)
    if not names:
        return loader
    from ignite_app.data.augment import Augment, AugmentedLoader

    return AugmentedLoader(loader, sampler, cfg.batch_size, Augment(names, cfg.seed), device)  # type: ignore[return-value]


def build_evaluation(cfg: Config, model: torch.nn.Module, spec: DataSpec, data: Dataset,
                     device: torch.device, preprocess: Preprocessor | None = None) -> tuple[Engine, Loader]:
    """An evaluator with the task's metrics and a loader over all of ``data`` in order (``evaluate``)."""
    size = nominal_size(data, None, cfg.batch_size, train=False)  # issue 13: a stream is read to its end
    loader = make_data_loader(cfg, data, EpochSampler(size, cfg.seed, shuffle=False, pad=False), device)
    evaluator = build_evaluator(model, spec.task, device, amp=cfg.amp, channels_last=cfg.channels_last,
                                metrics=validation_metrics(cfg, spec, device, target_units(preprocess, device)))
    return evaluator, loader


def validation_metrics(cfg: Config, spec: DataSpec, device: torch.device,
                       to_units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Metric]:
    """The loss and ``--metrics`` (or the task's default) as Ignite metrics; the monitored one must be among them.

    ``to_units`` maps standardised regression outputs and targets back to the targets' own units.
    """
    classes = spec.num_outputs if spec.task == "classification" else None
    metrics = metrics_for(spec.task, device, cfg.metrics, classes, to_units=to_units)
    check_monitor(cfg.monitor, list(metrics))
    return metrics


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
    x = splits.train.pair(splits.train.first)[0] if isinstance(splits.train, Stream) else torch.as_tensor(splits.train[0][0])
    return x.unsqueeze(0).expand(2, *x.shape).to(device)


def attach_training_handlers(run: Run, echo: Echo) -> None:
    """Order matters at EPOCH_COMPLETED: loss check, validation, summary line (the checkpoint comes last)."""
    cfg, trainer, evaluator = run.cfg, run.trainer, run.evaluator
    attach_loss_tracker(trainer, run.tracker)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, average_train_loss)
    run.monitor = Monitor(cfg.monitor, cfg.mode)
    schedule = make_schedule(cfg, run.optimizer, run.epoch_length, run.monitor.mode)
    attach_schedule(schedule, trainer, evaluator, run.monitor, warmup_steps(cfg, run.epoch_length))
    run.scheduler, run.plateau = schedule.per_step, schedule.plateau
    if run.is_writer and progress_wanted(cfg):
        attach_progress_bar(trainer, cfg.log_every)  # before validation: the bar is gone before the epoch line
    attach_validation(trainer, evaluator, run.val_loader)
    run.monitor.attach(trainer, evaluator)
    if cfg.patience > 0:
        run.stopper = attach_early_stopping(trainer, evaluator, cfg.patience, run.monitor.score)
    if run.is_writer:
        attach_epoch_summary(trainer, evaluator, echo)


def attach_checkpointers(run: Run) -> None:
    """The best-model checkpointer (on the evaluator) and the resumable checkpoint with everything it holds.

    Every piece of state that a resume needs is listed in ``run.to_save`` here, and nowhere else.
    """
    # Written on a worker thread: an epoch does not wait for the fsyncs (20 ms and more per file on some disks).
    # Saves at one training step (best model, training checkpoint) share their snapshot of the weights.
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(run.run_dir / ckpt.CHECKPOINT_DIR, write=run.is_writer),
                                 clock=lambda: run.trainer.state.iteration)
    spec = run.splits.spec
    meta = Meta({"model_class": type(run.raw_model).__name__, "task": spec.task, "num_outputs": spec.num_outputs,
                 "input_shape": list(spec.input_shape), "world_size": idist.get_world_size(),
                 "batch_size": run.cfg.batch_size})
    monitor = run.monitor or Monitor(run.cfg.monitor, run.cfg.mode)
    run.best_checkpoint = ckpt.make_best_checkpoint(
        evaluated_model(run.raw_model, run.ema), meta, saver, global_step_from_engine(run.trainer, Events.ITERATION_COMPLETED),
        preprocess=run.splits.preprocess, score_function=monitor.score, score_name=score_name(monitor))
    run.evaluator.add_event_handler(Events.COMPLETED, run.best_checkpoint)
    run.to_save = {"model": run.raw_model, "optimizer": run.optimizer, "trainer": run.trainer, "meta": meta,
                   "loss_tracker": PerRankState(run.tracker), "best_checkpointer": run.best_checkpoint}
    optional = {"lr_scheduler": run.scheduler, "early_stopping": run.stopper, "scaler": run.scaler,
                "grads": GradState(run.raw_model) if run.cfg.grad_accum > 1 else None,
                "data_stream": stream_state(run.splits.train, run.cfg),  # issue 13: where a resumable stream is
                "preprocess": run.splits.preprocess, "monitor": run.monitor, "plateau": run.plateau,  # issue 12
                "ema": run.ema.ema_model if run.ema is not None else None}
    run.to_save.update({k: v for k, v in optional.items() if v is not None})
    run.to_save["rng"] = PerRankState(RNGState())  # last: restored after everything else
    run.train_checkpoint = ckpt.make_train_checkpoint(run.to_save, saver, run.cfg.n_saved)


def stream_state(data: Any, cfg: Config) -> Stream | None:
    """issue 13: a training stream that can save its position (then it must be read in this process), else None."""
    if not isinstance(data, Stream) or not data.stateful:
        return None
    if cfg.num_workers > 0:
        raise UserError(f"{cfg.dataset}: a resumable IterableDataset is read in this process; use --num-workers 0")
    return data


def score_name(monitor: Monitor) -> str:
    """The best checkpoint's score name: ``neg_val_loss`` for the default monitor, as before."""
    return ("neg_" if monitor.mode == "min" else "") + monitor.monitor.replace("/", "_")


def average_train_loss(engine: Engine) -> None:
    """EPOCH_COMPLETED: the epoch's training loss over all processes (each ran the same number of batches)."""
    engine.state.metrics["train_loss"] = mean_over_processes(engine.state.metrics["train_loss"])


def progress_wanted(cfg: Config) -> bool:
    """``--progress``/``--no-progress``, else a bar only when stderr is a terminal."""
    return cfg.progress if cfg.progress is not None else sys.stderr.isatty()


def set_epoch_order(engine: Engine, sampler: EpochSampler, batch_size: int) -> None:
    """EPOCH_STARTED: this epoch's order; after a mid-epoch resume, skip the batches already done."""
    done = engine.state.iteration - (engine.state.epoch - 1) * engine.state.epoch_length
    sampler.set_epoch(engine.state.epoch - 1, start=done * batch_size)
