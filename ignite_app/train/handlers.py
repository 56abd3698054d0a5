"""Handlers, each a small ``attach_*`` function or callable that can be tested on a tiny engine."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping

from ignite_app.errors import NonFiniteLossError


class LossTracker:
    """Keeps each iteration's loss on the device and reads them on the host every ``check_every`` iterations.

    It finds the first non-finite loss (with its iteration) and the epoch's mean training loss with
    one host read per window: no host-device sync per iteration on GPUs, no per-iteration copy on CPUs.
    """

    def __init__(self, check_every: int) -> None:
        self.check_every = check_every
        self.pending: list[Any] = []  # the window's losses: device tensors (floats after a resume)
        self.total = 0.0
        self.count = 0

    def record(self, engine: Engine) -> None:
        """ITERATION_COMPLETED: keep the loss tensor; check the window when it is full."""
        self.pending.append(engine.state.output)
        if len(self.pending) >= self.check_every:
            self.check(engine)

    def check(self, engine: Engine) -> None:
        """Read the stored losses; raise :class:`NonFiniteLossError` at the first NaN or inf."""
        if not self.pending:
            return
        values = self.values()
        first = engine.state.iteration - len(values) + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"the training loss became {value} at iteration {first + offset} (epoch {engine.state.epoch}); "
                    "the last good checkpoint is kept: lower --lr or use --clip-grad-norm"
                )
        for value in values:  # one value at a time: the sum must not depend on where windows (or a resume) fall
            self.total += value
        self.count += len(values)
        self.pending = []

    def values(self) -> list[float]:
        """The window's losses as floats, in order: one host read for all the device tensors."""
        carried = [float(v) for v in self.pending if not isinstance(v, torch.Tensor)]
        tensors = [v for v in self.pending if isinstance(v, torch.Tensor)]
        return carried + (torch.stack(tensors).tolist() if tensors else [])  # the one host sync per window

    def start_epoch(self, engine: Engine) -> None:
        """EPOCH_STARTED: a fresh epoch mean (not on a mid-epoch resume, whose partial sums were restored)."""
        if (engine.state.iteration % engine.state.epoch_length) == 0:
            self.total, self.count, self.pending = 0.0, 0, []

    def end_epoch(self, engine: Engine) -> None:
        """EPOCH_COMPLETED: publish the epoch's mean loss as ``train_loss``."""
        self.check(engine)
        engine.state.metrics["train_loss"] = self.total / max(self.count, 1)

    def state_dict(self) -> dict[str, Any]:
        """Partial epoch sums and the unread window, so a mid-epoch resume reports the same epoch mean."""
        return {"pending": torch.tensor(self.values(), dtype=torch.float64), "total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the partial sums and the unread window."""
        self.pending = [float(v) for v in state["pending"].tolist()]
        self.total, self.count = float(state["total"]), int(state["count"])


def attach_loss_tracker(trainer: Engine, tracker: LossTracker) -> None:
    """Wire a :class:`LossTracker` to the trainer's events."""
    trainer.add_event_handler(Events.EPOCH_STARTED, tracker.start_epoch)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, tracker.record)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, tracker.end_epoch)


def attach_validation(trainer: Engine, evaluator: Engine, val_loader: Any) -> None:
    """Run the evaluator over the validation data at every EPOCH_COMPLETED."""
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val_loader))


def attach_early_stopping(trainer: Engine, evaluator: Engine, patience: int,
                          score_function: Callable[[Engine], float] | None = None) -> EarlyStopping:
    """Stop when the score (default: minus the validation loss) has not improved for ``patience`` evaluations.

    Registered on the evaluator's COMPLETED directly: ``EarlyStopping.attach`` would reset it at every run.
    """
    score = score_function or (lambda e: -float(e.state.metrics["loss"]))
    stopper = EarlyStopping(patience=patience, score_function=score, trainer=trainer)
    stopper.logger.setLevel(logging.WARNING)  # its timestamped INFO line repeats what the run's last line says
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    return stopper


def format_epoch_line(epoch: int, max_epochs: int, train_loss: float, metrics: dict[str, float], seconds: float) -> str:
    """One line per epoch: epoch, training loss and validation metrics."""
    parts = [f"epoch {epoch:>3}/{max_epochs}", f"train_loss {train_loss:.4f}"]
    parts += [f"val_{name} {value:.4f}" for name, value in metrics.items()]
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


def attach_epoch_summary(trainer: Engine, evaluator: Engine, write: Callable[[str], None]) -> None:
    """Print the epoch line after validation."""

    def summary(engine: Engine) -> None:
        line = format_epoch_line(
            engine.state.epoch, engine.state.max_epochs, engine.state.metrics.get("train_loss", float("nan")),
            dict(evaluator.state.metrics), engine.state.times.get(Events.EPOCH_COMPLETED.name) or 0.0,
        )
        write(line)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, summary)


class StopSignal:
    """SIGTERM, SIGINT and the --requeue-signal only set a flag; a second Ctrl-C exits at once. Also a wall-clock limit.

    :meth:`when_requested` callbacks run once, at the first signal (in the signal handler, on the
    main thread) or when the time limit passes (on a timer thread), so nothing needs to poll before.
    """

    def __init__(self, time_limit: float | None = None, clock: Callable[[], float] = time.monotonic,
                 requeue_signal: int | None = None) -> None:
        self.signum: int | None = None
        self.signals = (signal.SIGTERM, signal.SIGINT) + ((signal.Signals(requeue_signal),) if requeue_signal else ())
        self.clock = clock
        self.deadline = None if time_limit is None else clock() + time_limit
        self._previous: dict[int, Any] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._notified = False
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        """Take over SIGTERM, SIGINT and the requeue signal, if any (main thread only), and start the time limit's timer."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if self.deadline is not None:
            self._timer = threading.Timer(max(0.0, self.deadline - self.clock()), self._notify)
            self._timer.daemon = True
            self._timer.start()

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers; stop the timer."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def when_requested(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once a stop may have been requested (at once if one already was)."""
        self._callbacks.append(callback)
        if self._notified or self.reason() is not None:
            self._notified = True
            callback()

    def _notify(self) -> None:
        if not self._notified:
            self._notified = True
            for callback in self._callbacks:
                callback()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            sys.stderr.write("\nsecond Ctrl-C: exiting now\n")
            os._exit(130)
        if self.signum is None:
            self.signum = signum
        self._notify()

    def reason(self) -> str | None:
        """``"SIGTERM"``, ``"SIGINT"``, the requeue signal's name (``"SIGUSR1"``), ``"time-limit"`` or None."""
        if self.signum is not None:
            return signal.Signals(self.signum).name
        if self.deadline is not None and self.clock() >= self.deadline:
            return "time-limit"
        return None


def attach_stop(trainer: Engine, should_stop: Callable[[], bool], on_stop: Callable[[Engine], None], every: int = 1) -> None:
    """At iteration boundaries (every ``every``-th), call ``on_stop`` and terminate once ``should_stop()``."""

    def check(engine: Engine) -> None:
        if engine.state.iteration % every == 0 and should_stop():
            on_stop(engine)
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
