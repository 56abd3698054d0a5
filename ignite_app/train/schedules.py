"""Learning-rate schedules (``--lr-schedule``, ``--warmup-epochs``/``--warmup-steps``) from torch's schedulers.

Per-iteration schedules (linear warmup, cosine, one-cycle) are one torch ``LRScheduler`` stepped after
every training iteration; ``plateau`` is torch's ``ReduceLROnPlateau`` stepped after every validation on
the monitored metric. Both have ``state_dict``s of plain values and go into the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import (
    CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, SequentialLR,
)

from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.train.metrics import Monitor


@dataclass
class Schedule:
    """The run's schedulers: one stepped per iteration, one per validation (either may be absent)."""

    per_step: LRScheduler | None = None
    plateau: ReduceLROnPlateau | None = None


def warmup_steps(cfg: Config, epoch_length: int) -> int:
    """Iterations of linear warmup: ``--warmup-steps``, or ``--warmup-epochs`` x iterations per epoch."""
    return cfg.warmup_steps or cfg.warmup_epochs * epoch_length


def make_schedule(cfg: Config, optimizer: torch.optim.Optimizer, epoch_length: int, monitor_mode: str) -> Schedule:
    """The schedulers ``cfg`` asks for; a constant schedule without warmup needs none."""
    total, warmup = cfg.epochs * epoch_length, warmup_steps(cfg, epoch_length)
    if warmup >= total:
        raise UserError(f"a warmup of {warmup} iterations is the whole run ({total} iterations, --epochs {cfg.epochs}); "
                        "shorten --warmup-epochs or --warmup-steps")
    if cfg.lr_schedule == "onecycle":  # its own warmup: up to --lr over the warmup (default 30%), then down
        rise = warmup or max(1, round(0.3 * total))  # whole iterations, so that one step lands on --lr exactly
        pct = rise / total
        return Schedule(OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct))
    plateau = None
    if cfg.lr_schedule == "plateau":
        plateau = ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    after = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1)) if cfg.lr_schedule == "cosine" else None
    if not warmup:
        return Schedule(after, plateau)
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    per_step = ramp if after is None else SequentialLR(optimizer, [ramp, after], milestones=[warmup])
    return Schedule(per_step, plateau)


def step_per_iteration(scheduler: LRScheduler) -> None:
    """ITERATION_COMPLETED: one scheduler step; a one-cycle schedule stops at its last step (a resume may add epochs)."""
    if isinstance(scheduler, OneCycleLR) and scheduler.last_epoch + 1 >= scheduler.total_steps:
        return
    scheduler.step()


def attach_schedule(schedule: Schedule, trainer: Engine, evaluator: Engine, monitor: Monitor, warmup: int) -> None:
    """Step the per-iteration scheduler after each iteration and the plateau one after each validation past the warmup."""
    if schedule.per_step is not None:
        per_step = schedule.per_step
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: step_per_iteration(per_step))
    if schedule.plateau is not None:
        plateau = schedule.plateau

        def on_validation(engine: Engine) -> None:
            if trainer.state.iteration > warmup:  # the warmup's own rise is not a plateau
                plateau.step(monitor.value(engine))

        evaluator.add_event_handler(Events.COMPLETED, on_validation)
