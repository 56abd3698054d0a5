"""``ignite-app lr-find``: Ignite's FastaiLRFinder on the configured model and data.

A learning-rate sweep needs no trained run: it trains the configured model from fresh weights
while the rate grows, and writes nothing but its plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import assert_one_error_line, invoke_app, run_app
from ignite_app.config import Config
from ignite_app.train.lrfind import sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START, END, STEPS = 1e-5, 1.0, 20

pytestmark = pytest.mark.usefixtures("torch_threads")


def grid_index(lr: float) -> float:
    """Where ``lr`` falls on the exponential sweep from START to END in STEPS steps."""
    return STEPS * math.log(lr / START) / math.log(END / START)


def test_sweep_grows_the_rate_exponentially_and_suggests_one_where_the_loss_falls():
    result = sweep(Config(model="mlp"), START, END, STEPS)
    assert len(result.lrs) == len(result.losses) == STEPS and not result.diverged
    assert [round(grid_index(lr), 6) for lr in result.lrs] == list(range(1, STEPS + 1))
    i = result.lrs.index(result.suggestion)
    assert 0 < i < STEPS - 1 and result.losses[i] < result.losses[0]


def test_lr_find_prints_the_suggestion_and_saves_only_the_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text("model: mlp\nbatch_size: 64\n")
    result = invoke_app("lr-find", "--config", "config.yaml", "--no-progress", "--start-lr", str(START),
                        "--end-lr", str(END), "--num-iter", str(STEPS), "--plot", "curve.png")
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("suggested learning rate: "))
    suggested = float(line.split(": ")[1])
    assert START < suggested < END
    assert abs(grid_index(suggested) - round(grid_index(suggested))) < 0.02  # printed with 3 digits
    assert f"train with: ignite-app train --lr {line.split(': ')[1]}" in result.stdout
    data = Path("curve.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "curve.png"]


BAD_INPUTS = [
    (["--resume", "runs/x"], "lr-find always starts from fresh weights; drop --resume"),
    (["--num-iter", "2"], "invalid --num-iter 2"),
    (["--end-lr", "1e-9"], "invalid --end-lr 1e-09: expected a number above --start-lr"),
    (["--start-lr", "0"], "invalid --start-lr 0.0"),
    (["--plot", "curve.jpg"], "unsupported file type '.jpg'"),
    (["--dataset", "csv:missing.csv"], "does not exist"),
    (["--dataset", "synthetic-regression", "--model", "cnn"], "--model cnn needs image-shaped samples"),
    (["--optimizer", "lbfgs"], "Invalid value for '--optimizer'"),
]


@pytest.mark.parametrize("args, match", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    result = invoke_app("lr-find", "--no-progress", *args)
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e  # a real process (or a real store): seconds, not milliseconds
def test_bad_input_in_a_real_process(tmp_path):
    result = run_app("lr-find", "--num-iter", "1", cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "invalid --num-iter 1")
    assert list(tmp_path.iterdir()) == []


def test_sweep_builds_the_model_and_step_as_train_does(monkeypatch):
    """--clip-grad-norm and --channels-last reach the sweep: it trains what build_pipeline builds for train."""
    from ignite.handlers import FastaiLRFinder

    seen = {}
    attach = FastaiLRFinder.attach

    def spy(self, trainer, to_save, *args, **kwargs):
        seen["model"], seen["optimizer"] = to_save["model"], to_save["optimizer"]
        return attach(self, trainer, to_save, *args, **kwargs)

    monkeypatch.setattr(FastaiLRFinder, "attach", spy)
    clipped = []
    monkeypatch.setattr("torch.nn.utils.clip_grad_norm_", lambda params, max_norm, *a, **k: clipped.append(max_norm))
    sweep(Config(model="cnn", clip_grad_norm=0.5, channels_last=True), START, END, 5)
    assert seen["model"].features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert len(clipped) >= 5 and set(clipped) == {0.5}  # a clip before every optimizer step of the sweep
