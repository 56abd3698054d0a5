"""The mid-epoch stop check: absent from the iteration loop until a signal or the time limit arrives,
then exact to the iteration where the request landed."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from ignite.engine import Events

from ignite_app.config import Config
from ignite_app.io import checkpoint as ckpt
from ignite_app.train.build import build_run
from ignite_app.train.handlers import StopSignal
from ignite_app.train.loop import close_run, open_run


def stop_checks(engine) -> int:
    """ITERATION_COMPLETED handlers made by attach_stop (Ignite has no public list of handlers)."""
    return sum("attach_stop" in getattr(h, "__qualname__", "") for h, *_ in engine._event_handlers[Events.ITERATION_COMPLETED])


def open_digits_run(out, stop: StopSignal):
    cfg = Config(dataset="digits", model="mlp", epochs=2, patience=0, progress=False, device="cpu", output_dir=str(out))
    run = build_run(cfg, torch.device("cpu"), echo=lambda line: None)
    open_run(run, stop, lambda line: None)
    return run


@pytest.mark.parametrize("at", [7, 23])  # mid-epoch 1; the first iteration of epoch 2 (23 batches an epoch)
def test_a_signal_stops_at_the_iteration_it_landed_in_and_nothing_was_checked_before(tmp_path, torch_threads, at):
    stop = StopSignal()
    stop.install()
    try:
        run = open_digits_run(tmp_path / "run", stop)
        assert stop_checks(run.trainer) == 0  # one process: no per-iteration stop check yet
        run.trainer.add_event_handler(Events.ITERATION_STARTED(once=at), lambda _: os.kill(os.getpid(), signal.SIGTERM))
        try:
            run.trainer.run(run.train_loader, max_epochs=2, epoch_length=run.epoch_length)
        finally:
            close_run(run)
    finally:
        stop.uninstall()
    assert stop.reason() == "SIGTERM" and run.trainer.state.iteration == at
    assert stop_checks(run.trainer) == 1  # attached by the signal
    saved = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / f"checkpoint_{at}.pt", require_checksum=True)
    assert saved["trainer"]["iteration"] == at


def test_the_time_limit_calls_back_once_from_its_timer():
    stop, called = StopSignal(time_limit=0.2), threading.Event()
    calls = []
    stop.when_requested(lambda: (calls.append(stop.reason()), called.set()))
    assert calls == []
    stop.install()
    try:
        assert called.wait(10)
        time.sleep(0.1)
    finally:
        stop.uninstall()
    assert calls == ["time-limit"]


def test_a_stop_already_requested_calls_back_at_once_and_uninstall_cancels_the_timer():
    passed = StopSignal(time_limit=1e-9)
    calls = []
    passed.when_requested(lambda: calls.append("now"))
    assert calls == ["now"]
    later = StopSignal(time_limit=0.1)
    later.when_requested(lambda: calls.append("late"))
    later.install()
    later.uninstall()
    time.sleep(0.3)
    assert calls == ["now"]
