"""Validation at a larger batch (issue 16) gives the metrics of validation at the training batch."""

from __future__ import annotations

import pytest
import torch
from conftest import train_in_process

from ignite_app.data.loaders import EpochSampler, make_loader
from ignite_app.train.build import validation_batch_size
from ignite_app.train.engines import build_evaluator


@pytest.mark.parametrize("train, expected", [(1, 4), (64, 256), (2000, 4096), (5000, 5000)])
def test_validation_runs_four_times_the_training_batch_within_bounds(train, expected):
    assert validation_batch_size(train) == expected


def test_a_runs_validation_metrics_equal_those_at_the_training_batch(tmp_path, torch_threads):
    run = train_in_process(tmp_path / "run", model="mlp")
    assert run.val_loader.batch_size == 256 and run.cfg.batch_size == 64
    val = run.splits.val
    loader = make_loader(val, 64, EpochSampler(len(val), 0, shuffle=False), in_memory=True, num_workers=0,
                         device=torch.device("cpu"), seed=0)
    at_64 = build_evaluator(run.raw_model, "classification", torch.device("cpu"))
    at_64.run(loader)
    assert run.evaluator.state.metrics["accuracy"] == at_64.state.metrics["accuracy"]
    assert run.evaluator.state.metrics["loss"] == pytest.approx(at_64.state.metrics["loss"], rel=1e-6)
