"""The terminal progress bar: redrawn at tqdm's rate, never twice per update, and still showing the loss."""

from __future__ import annotations

import io

import pytest
import torch
from ignite.engine import Engine

from ignite_app.train.tblog import attach_progress_bar


def _count_draws(bar_file: io.StringIO, iterations: int, every: int, mininterval: float) -> tuple[int, str]:
    trainer = Engine(lambda engine, batch: torch.tensor(float(batch)))
    bar = attach_progress_bar(trainer, every)
    bar.tqdm_kwargs.update(file=bar_file, mininterval=mininterval)
    draws = []
    original = bar_file.write
    bar_file.write = lambda text: (draws.append(text), original(text))[1]  # type: ignore[method-assign]
    trainer.run(range(iterations), max_epochs=1)
    return sum(1 for text in draws if "loss" in text), bar_file.getvalue()


def test_the_bar_redraws_at_tqdms_rate_not_twice_per_call():
    draws, _ = _count_draws(io.StringIO(), iterations=500, every=1, mininterval=3600.0)
    # Ignite's handler sets the description and the postfix at each of the 500 calls; with tqdm's
    # default redraw on each set, that was ~1000 draws. Now only the opening and closing draws remain.
    assert draws <= 3


@pytest.mark.parametrize("every", [1, 7])
def test_the_bar_still_shows_the_latest_loss(every):
    draws, text = _count_draws(io.StringIO(), iterations=50, every=every, mininterval=0.0)
    last = max(i for i in range(1, 51) if i % every == 0) - 1  # the batch value is the loss
    assert draws >= 50 // every - 1
    assert f"loss={last:.3g}" in text or f"loss={float(last)}" in text, text[-300:]
