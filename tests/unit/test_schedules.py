"""--warmup-epochs/--warmup-steps, --lr-schedule onecycle and plateau: the lr curve read back from TensorBoard."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_one_error_line, invoke_app, read_scalars
from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.io.checkpoint import train_checkpoints

EPOCH = 6  # iterations per epoch: 1438 digits in batches of 256
LR = 0.01
pytestmark = pytest.mark.usefixtures("torch_threads")


def newest_checkpoint(run_dir):
    """The newest resumable checkpoint of a run, loaded the safe way."""
    return torch.load(train_checkpoints(run_dir)[0], weights_only=True)


def lr_curve(tmp_path, *args: str) -> list[tuple[int, float]]:
    """Train the MLP on digits with ``args`` and the lr logged every iteration; returns (iteration, lr) pairs.

    The lr logged at iteration i is the one the scheduler set for iteration i + 1.
    """
    run = tmp_path / "run"
    result = invoke_app("train", "--no-progress", "--model", "mlp", "--batch-size", "256", "--patience", "0",
                        "--lr", str(LR), "--log-every", "1", "--output-dir", str(run), *args)
    assert result.exit_code == 0, result.output + result.stderr
    return read_scalars(run)["train/lr/group_0"]


def test_warmup_steps_then_cosine(tmp_path):
    warmup, total = 5, 3 * EPOCH
    curve = lr_curve(tmp_path, "--epochs", "3", "--lr-schedule", "cosine", "--warmup-steps", str(warmup))
    for step, lr in curve:
        if step < warmup:
            want = LR * (1 / warmup + (1 - 1 / warmup) * step / warmup)  # linear from lr/warmup up to lr
        else:
            want = LR * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
        assert lr == pytest.approx(want, rel=1e-5, abs=1e-9), step
    assert [s for s, _ in curve] == list(range(1, total + 1))


def test_warmup_epochs_then_constant(tmp_path):
    curve = dict(lr_curve(tmp_path, "--epochs", "2", "--warmup-epochs", "1"))
    assert curve[1] == pytest.approx(LR * (1 / EPOCH + (1 - 1 / EPOCH) / EPOCH))
    assert all(curve[s] < curve[s + 1] for s in range(1, EPOCH))
    assert all(curve[s] == pytest.approx(LR) for s in range(EPOCH, 2 * EPOCH + 1))


def test_onecycle_peaks_at_lr(tmp_path):
    total = 4 * EPOCH
    curve = lr_curve(tmp_path, "--epochs", "4", "--lr-schedule", "onecycle")
    values = [lr for _, lr in curve]
    peak = max(range(len(values)), key=values.__getitem__)
    assert values[peak] == pytest.approx(LR, rel=1e-3)
    assert curve[peak][0] + 1 == round(0.3 * total)  # iteration 7 of 24 trains at --lr: up for 30%, then down
    assert values[0] < LR / 5 and values[-1] < LR / 1000  # from lr/25 (iteration 1) down to lr/25e4
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:-1], values[peak + 1:]))


def test_plateau_drops_the_lr_when_the_monitor_stalls(tmp_path):
    # mode min on accuracy: a rising accuracy counts as no improvement, so the lr must drop
    curve = dict(lr_curve(tmp_path, "--epochs", "4", "--lr-schedule", "plateau", "--plateau-patience", "0",
                          "--monitor", "val/accuracy", "--mode", "min"))
    accuracy = read_scalars(tmp_path / "run")["val/accuracy"]
    lr, best, bad, seen = LR, math.inf, 0, set()
    for step, value in accuracy:
        seen.add(lr)
        assert all(curve[s] == pytest.approx(lr) for s in range(step - EPOCH + 1, step + 1)), step  # one lr per epoch
        if value < best * (1 - 1e-4):  # ReduceLROnPlateau's default threshold: relative 1e-4
            best, bad = value, 0
        else:
            bad += 1
        if bad > 0:  # --plateau-patience 0: the next epoch trains at lr x 0.1
            lr, bad = lr * 0.1, 0
    assert min(seen) < LR


def test_schedule_state_is_in_the_checkpoint(tmp_path):
    lr_curve(tmp_path, "--epochs", "2", "--lr-schedule", "plateau", "--warmup-steps", "3")
    last = newest_checkpoint(tmp_path / "run")
    assert last["lr_scheduler"]["last_epoch"] == 2 * EPOCH and "num_bad_epochs" in last["plateau"]


@pytest.mark.parametrize("options, match", [
    ({"warmup_epochs": 1, "warmup_steps": 3}, "--warmup-epochs and --warmup-steps both given: keep one"),
    ({"warmup_steps": -1}, r"invalid --warmup-steps -1: expected an integer >= 0"),
    ({"plateau_factor": 1.5}, r"invalid --plateau-factor 1.5: expected a number between 0 and 1"),
])
def test_bad_schedule_options_are_user_errors(options, match):
    with pytest.raises(UserError, match=match):
        Config(**options)


def test_a_warmup_as_long_as_the_run_is_one_error_line(tmp_path):
    result = invoke_app("train", "--no-progress", "--model", "mlp", "--batch-size", "256", "--epochs", "1",
                        "--warmup-epochs", "1", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "a warmup of 6 iterations is the whole run")
    assert not (tmp_path / "run").exists()
