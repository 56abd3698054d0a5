"""--class-weights auto and --balanced-sampler: weights as scikit-learn computes them, a sampler fixed by (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from sklearn.utils.class_weight import compute_class_weight

from conftest import assert_one_error_line, invoke_app
from ignite_app.config import Config, build_config
from ignite_app.data.balance import BalancedEpochSampler, class_counts, inverse_frequency, training_labels
from ignite_app.errors import UserError

pytestmark = pytest.mark.usefixtures("torch_threads")
LABELS = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)


def test_inverse_frequency_equals_sklearn_balanced():
    want = compute_class_weight("balanced", classes=np.arange(3), y=LABELS.numpy())
    assert inverse_frequency(class_counts(LABELS, 3)) == pytest.approx(want.tolist())
    assert inverse_frequency(class_counts(torch.tensor([0, 0, 2]), 3))[1] == 0.0  # absent from training


def test_auto_weights_are_recorded_and_weight_the_training_loss(tmp_path):
    from ignite_app.train.build import build_run

    cfg = Config(dataset="digits", model="mlp", model_args={"dropout": 0.0}, epochs=1, batch_size=64, patience=0,
                 progress=False, device="cpu", class_weights="auto", output_dir=str(tmp_path))
    run = build_run(cfg, torch.device("cpu"), echo=lambda line: None)
    labels = training_labels(run.splits.train)
    want = compute_class_weight("balanced", classes=np.arange(10), y=labels.numpy())
    assert run.cfg.class_weights == pytest.approx(want.tolist(), abs=1e-6)
    assert build_config(yaml.safe_load(yaml.safe_dump(run.cfg.to_dict())), {}).class_weights == run.cfg.class_weights

    x, y = next(iter(run.train_loader))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(run.raw_model(x), y, weight=torch.tensor(run.cfg.class_weights))
        unweighted = torch.nn.functional.cross_entropy(run.raw_model(x), y)
    run.trainer.run(run.train_loader, max_epochs=1, epoch_length=1)
    assert float(run.trainer.state.output) == pytest.approx(float(expected), rel=1e-6)
    assert float(expected) != pytest.approx(float(unweighted), rel=1e-6)


def test_the_balanced_sampler_evens_out_classes_and_is_fixed_by_seed_and_epoch():
    sampler = BalancedEpochSampler(LABELS, 3, seed=7)
    counts = torch.zeros(3)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        counts += torch.bincount(LABELS[sampler.indices()], minlength=3)
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.03  # each class about a third, not 80/15/5 %
    again = BalancedEpochSampler(LABELS, 3, seed=7)
    again.set_epoch(3)
    sampler.set_epoch(3)
    first = sampler.indices()
    assert torch.equal(again.indices(), first)
    again.set_epoch(3, start=40)  # a mid-epoch resume continues the same draw
    assert torch.equal(again.indices(), first[40:])
    sampler.set_epoch(4)
    assert not torch.equal(sampler.indices(), first)


def test_the_balanced_sampler_shards_over_processes():
    shards = [BalancedEpochSampler(LABELS, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    whole = BalancedEpochSampler(LABELS, 3, seed=1)
    assert torch.equal(torch.stack([s.indices() for s in shards], 1).reshape(-1), whole.indices())


def test_class_weights_on_regression_is_one_error_line(tmp_path):
    result = invoke_app("train", "--no-progress", "--dataset", "synthetic-regression", "--epochs", "1",
                        "--class-weights", "auto", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output,
                          "--class-weights is for classification, but this data is regression; drop it")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["some", [1, -1], [], [True]])
def test_bad_class_weights_are_user_errors(value):
    with pytest.raises(UserError, match="invalid --class-weights"):
        Config(class_weights=value)


def test_the_same_command_with_class_weights_auto_resumes_its_run(tmp_path):
    """--class-weights auto is saved as the weights it found; rerunning the command (--resume auto, a retry) continues."""
    run = tmp_path / "run"
    command = ["train", "--no-progress", "--model", "mlp", "--class-weights", "auto", "--output-dir", str(run), "--resume", "auto"]
    first = invoke_app(*command, "--epochs", "1")
    assert first.exit_code == 0, first.output
    weights = yaml.safe_load((run / "config.yaml").read_text())["class_weights"]
    assert isinstance(weights, list) and len(weights) == 10
    again = invoke_app(*command, "--epochs", "2")
    assert again.exit_code == 0, again.output
    assert "epoch   2/2" in again.output
    explicit = invoke_app("train", "--no-progress", "--resume", str(run), "--class-weights", "auto", "--epochs", "3")
    assert explicit.exit_code == 0, explicit.output
    assert yaml.safe_load((run / "config.yaml").read_text())["class_weights"] == weights
    other = invoke_app("train", "--no-progress", "--resume", str(run), "--class-weights", "none", "--epochs", "4")
    assert other.exit_code == 2 and "--class-weights cannot change when resuming" in other.output


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_more_epochs_on_resume_are_refused_for_a_schedule_laid_out_over_the_run(tmp_path, schedule):
    """A cosine or one-cycle scheduler keeps its length on resume: more epochs would raise (cosine) or freeze (onecycle) the lr."""
    run = tmp_path / "run"
    first = invoke_app("train", "--no-progress", "--model", "mlp", "--lr-schedule", schedule, "--epochs", "1",
                       "--output-dir", str(run))
    assert first.exit_code == 0, first.output
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    more = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "2")
    assert_one_error_line(more.exit_code, more.stderr, more.output,
                          f"--epochs 2: this run's {schedule} schedule is laid out over its 1 epochs and cannot be stretched")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    same = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "1")
    assert same.exit_code == 0 and "already" in same.output
