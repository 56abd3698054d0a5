"""--metrics under torchrun: a 2-process run logs the same numbers as a one-process evaluation of its checkpoint."""

from __future__ import annotations

import json

import pytest

from conftest import read_scalars, run_app, run_torchrun

METRICS = ("accuracy", "precision", "recall", "f1", "top3")


def test_two_process_metrics_equal_the_one_process_evaluation(tmp_path):
    run = tmp_path / "run"
    result = run_torchrun("--device", "cpu", "--no-progress", "--epochs", "1", "--patience", "0", "--batch-size", "16",
                          "--model", "mlp", "--metrics", ",".join(METRICS) + ",confusion_matrix",
                          "--output-dir", str(run))
    assert result.returncode == 0, result.stderr
    checkpoint = next((run / "checkpoints").glob("checkpoint_*.pt"))
    evaluated = run_app("evaluate", str(checkpoint), "--json", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    one_process = json.loads(evaluated.stdout)
    logged = read_scalars(run)
    for name in ("loss", *METRICS):
        assert one_process[name] == pytest.approx(logged[f"val/{name}"][-1][1], abs=1e-6), name
    assert sum(map(sum, one_process["confusion_matrix"])) == 359  # every validation sample counted once
