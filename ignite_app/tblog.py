"""TensorBoard (through tensorboardX) and the terminal progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine
from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, OutputHandler, TensorboardLogger

from ignite_app.config import Config


def open_tensorboard(run_dir: Path, purge_step: int | None = None) -> TensorboardLogger:
    """A logger writing event files into ``run_dir``; ``purge_step`` hides stale steps of a resumed run."""
    # tensorboardX names event files by the second and opens them with "wb": a resume within the same
    # second would overwrite the earlier file. A nanosecond suffix keeps names unique and in creation order.
    suffix = f".{time.time_ns()}"
    return TensorboardLogger(log_dir=str(run_dir), purge_step=purge_step, flush_secs=30, filename_suffix=suffix)


def attach_tensorboard(
    tb: TensorboardLogger, trainer: Engine, evaluator: Engine, optimizer: torch.optim.Optimizer, cfg: Config
) -> None:
    """``train/loss`` and ``train/lr`` every ``log_every`` iterations, ``val/*`` after each validation.

    Every tag shares one x-axis: the trainer's iteration. The loss is read from the device only here.
    """
    every = Events.ITERATION_COMPLETED(every=cfg.log_every)
    tb.attach(trainer, OutputHandler(tag="train", output_transform=lambda loss: {"loss": loss}), every)
    tb.attach(trainer, OptimizerParamsHandler(optimizer, param_name="lr", tag="train"), every)
    tb.attach(
        evaluator,
        OutputHandler(tag="val", metric_names="all", global_step_transform=global_step_from_engine(trainer, Events.ITERATION_COMPLETED)),
        Events.COMPLETED,
    )


def attach_progress_bar(trainer: Engine, every: int) -> Any:
    """A tqdm bar on stderr, refreshed (and the loss read) every ``every`` iterations."""
    from ignite.handlers import ProgressBar

    bar = ProgressBar(persist=False)
    bar.attach(trainer, output_transform=lambda loss: {"loss": loss}, event_name=Events.ITERATION_COMPLETED(every=every))
    return bar
