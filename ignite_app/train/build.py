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
from torch.utils.data import DataLoader, Dataset

from ignite_app.config import Config
from ignite_app.data.loaders import EpochSampler, InMemoryLoader, epoch_length, make_loader
from ignite_app.data.sources import DataSpec, Splits, load_splits
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.models import build_model, check_model_fits
from ignite_app.train.devices import resolve_device
from ignite_app.train.distributed import PerRankState, fail_together, in_process_group, local_device, mean_over_processes
from ignite_app.train.engines import add_gradient_clipping, build_evaluator, build_trainer, make_scaler
from ignite_app.train.handlers import (
    LossTracker, attach_early_stopping, attach_epoch_summary, attach_loss_tracker, attach_validation,
)
from ignite_app.train.state import GradState, Meta, RNGState
from ignite_app.train.threads import use_threads
from ignite_app.train.cudagraph import note_on_stderr, wants_cuda_graph

Echo = Callable[[str], None]
Loader = InMemoryLoader | DataLoader


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
        raw_model = build_model(cfg.model, splits.spec).to(device)
        if cfg.channels_last:
            raw_model = raw_model.to(memory_format=torch.channels_last)
        train_sampler, val_sampler = make_samplers(cfg, splits)
        train_loader = make_data_loader(cfg, splits.train, train_sampler, device)
        val_loader = make_data_loader(cfg.replace(batch_size=validation_batch_size(cfg.batch_size)), splits.val, val_sampler, device)
        check_model_fits(raw_model, splits.spec, sample_batch(splits, device))
        optimizer = make_optimizer(cfg, raw_model)
        if cfg.clip_grad_norm is not None:
            add_gradient_clipping(optimizer, cfg.clip_grad_norm)
    model = wrap_model(raw_model, device, cfg.compile, cfg.compile_mode)
    scaler = make_scaler(device, cfg.amp)
    graph = wants_cuda_graph(cfg, device, in_process_group())  # issue 16: on by default where it can record
    trainer = build_trainer(model, optimizer, splits.spec.task, device, amp=cfg.amp,
                            channels_last=cfg.channels_last, grad_accum=cfg.grad_accum, scaler=scaler,
                            graph_batch_size=cfg.batch_size if graph else None,
                            graph_fallback=note_on_stderr if cfg.cuda_graph is None else None)
    evaluator = build_evaluator(model, splits.spec.task, device, amp=cfg.amp, channels_last=cfg.channels_last)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: set_epoch_order(e, train_sampler, cfg.batch_size))
    return Pipeline(cfg=cfg, device=device, splits=splits, raw_model=raw_model, model=model, optimizer=optimizer,
                    scaler=scaler, trainer=trainer, evaluator=evaluator, train_loader=train_loader,
                    val_loader=val_loader, train_sampler=train_sampler,
                    epoch_length=epoch_length(train_sampler, cfg.batch_size))


def build_run(cfg: Config, device: torch.device, echo: Echo = print) -> Run:
    """:func:`build_pipeline` plus the training handlers and checkpoint objects; writes nothing to disk."""
    pipe = build_pipeline(cfg, device)
    run = Run(**vars(pipe), run_dir=Path(cfg.output_dir or "."), tracker=LossTracker(cfg.log_every))
    attach_training_handlers(run, echo)
    attach_checkpointers(run)
    return run


def validation_batch_size(batch_size: int) -> int:
    """Issue 16: validation keeps no activations for a backward pass, so it runs 4x the training batch (at most
    4096, never less than the training batch): fewer batches, so less of Ignite's per-batch event and metric work."""
    return max(batch_size, min(4 * batch_size, 4096))


def make_samplers(cfg: Config, splits: Splits) -> tuple[EpochSampler, EpochSampler]:
    """Training order from (seed, epoch), sharded over processes; validation in order, unpadded."""
    rank, world = idist.get_rank(), idist.get_world_size()
    train = EpochSampler(len(splits.train), cfg.seed, shuffle=True, rank=rank, world_size=world, pad=True)
    val = EpochSampler(len(splits.val), cfg.seed, shuffle=False, rank=rank, world_size=world, pad=False)
    return train, val


def make_data_loader(cfg: Config, data: Dataset, sampler: EpochSampler, device: torch.device) -> Loader:
    """The batches of ``data`` in ``sampler``'s order, as ``cfg`` asks (in memory or through a DataLoader)."""
    return make_loader(data, cfg.batch_size, sampler, in_memory=cfg.in_memory, num_workers=cfg.num_workers,
                       device=device, seed=cfg.seed, threads=cfg.threads)


def build_evaluation(cfg: Config, model: torch.nn.Module, spec: DataSpec, data: Dataset,
                     device: torch.device) -> tuple[Engine, Loader]:
    """An evaluator with the task's metrics and a loader over all of ``data`` in order (``evaluate``)."""
    loader = make_data_loader(cfg, data, EpochSampler(len(data), cfg.seed, shuffle=False, pad=False), device)
    return build_evaluator(model, spec.task, device, amp=cfg.amp, channels_last=cfg.channels_last), loader


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
    x = torch.as_tensor(splits.train[0][0])
    return x.unsqueeze(0).expand(2, *x.shape).to(device)


def attach_training_handlers(run: Run, echo: Echo) -> None:
    """Order matters at EPOCH_COMPLETED: loss check, validation, summary line (the checkpoint comes last)."""
    cfg, trainer, evaluator = run.cfg, run.trainer, run.evaluator
    attach_loss_tracker(trainer, run.tracker)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, average_train_loss)
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(run.optimizer, T_max=cfg.epochs * run.epoch_length)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: scheduler.step())
        run.scheduler = scheduler
    if run.is_writer and progress_wanted(cfg):
        from ignite_app.train.tblog import attach_progress_bar

        attach_progress_bar(trainer, cfg.log_every)  # before validation: the bar is gone before the epoch line
    attach_validation(trainer, evaluator, run.val_loader)
    if cfg.patience > 0:
        run.stopper = attach_early_stopping(trainer, evaluator, cfg.patience)
    if run.is_writer:
        attach_epoch_summary(trainer, evaluator, echo)


def attach_checkpointers(run: Run) -> None:
    """The best-model checkpointer (on the evaluator) and the resumable checkpoint with everything it holds.

    Every piece of state that a resume needs is listed in ``run.to_save`` here, and nowhere else.
    """
    # Written on a worker thread: an epoch does not wait for the fsyncs (20 ms and more per file on some disks).
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(run.run_dir / ckpt.CHECKPOINT_DIR, write=run.is_writer))
    spec = run.splits.spec
    meta = Meta({"model_class": type(run.raw_model).__name__, "task": spec.task, "num_outputs": spec.num_outputs,
                 "input_shape": list(spec.input_shape), "world_size": idist.get_world_size(),
                 "batch_size": run.cfg.batch_size})
    run.best_checkpoint = ckpt.make_best_checkpoint(
        run.raw_model, meta, saver, global_step_from_engine(run.trainer, Events.ITERATION_COMPLETED))
    run.evaluator.add_event_handler(Events.COMPLETED, run.best_checkpoint)
    run.to_save = {"model": run.raw_model, "optimizer": run.optimizer, "trainer": run.trainer, "meta": meta,
                   "loss_tracker": PerRankState(run.tracker), "best_checkpointer": run.best_checkpoint}
    optional = {"lr_scheduler": run.scheduler, "early_stopping": run.stopper, "scaler": run.scaler,
                "grads": GradState(run.raw_model) if run.cfg.grad_accum > 1 else None}
    run.to_save.update({k: v for k, v in optional.items() if v is not None})
    run.to_save["rng"] = PerRankState(RNGState())  # last: restored after everything else
    run.train_checkpoint = ckpt.make_train_checkpoint(run.to_save, saver, run.cfg.n_saved)


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
