"""Resume stays exact with issue 12's state on: EMA, warmup + cosine or plateau, class weights, balanced
sampling and a monitor on accuracy or F1. The model signals its own process mid-epoch; the resumed run must
end ``torch.equal`` to an uninterrupted one (model, EMA, optimizer, schedulers, monitor, RNG), with the same
TensorBoard scalars and epoch lines.
"""

from __future__ import annotations

import pytest

from conftest import run_train
from ignite_app.io import checkpoint as ckpt
from test_resume import (  # noqa: F401  (digits and models_dir are fixtures)
    EPOCH, Background, assert_same_run, base_args, checkpoints, digits, models_dir, resume_args, stopped_at,
)

OPTIONS = {
    "ema-warmup-cosine-class-weights-monitor-accuracy": (
        ["--ema-decay", "0.9", "--lr-schedule", "cosine", "--warmup-steps", "50", "--class-weights", "auto",
         "--monitor", "val/accuracy", "--mode", "max", "--metrics", "accuracy,f1"],
        "100:TERM", 143, ("ema", "lr_scheduler", "monitor")),
    "ema-plateau-warmup-balanced-sampler-monitor-f1": (
        ["--ema-decay", "0.95", "--lr-schedule", "plateau", "--plateau-patience", "0", "--warmup-epochs", "1",
         "--balanced-sampler", "--monitor", "val/f1", "--metrics", "f1,top3"],
        "150:INT", 130, ("ema", "lr_scheduler", "plateau", "monitor")),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_signal_mid_epoch_then_resume_is_exact_with_every_new_state(digits, models_dir, name):
    options, signal_at, code, saved_keys = OPTIONS[name]
    model = ["--model", "resume_models:SignalNet", *options]
    reference = Background(base_args(digits, models_dir / "ref", *model), models_dir / "ref", cwd=models_dir)
    run = models_dir / "run"
    first = run_train(*base_args(digits, run, *model), cwd=models_dir, SIGNAL_AT=signal_at)
    assert first.returncode == code, first.stderr
    at = int(signal_at.split(":")[0])
    assert at % EPOCH != 0 and stopped_at(first.stdout, f"SIG{signal_at.split(':')[1]}") == at
    saved = ckpt.read_checkpoint(checkpoints(run) / f"checkpoint_{at}.pt", require_checksum=True)
    assert set(saved_keys) <= set(saved)
    assert saved["monitor"]["monitor"] == options[options.index("--monitor") + 1]
    done = run_train(*resume_args(run, "--trust-config"), cwd=models_dir)
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference, first.stdout, done.stdout)
