"""--metrics under torchrun: a 2-process run logs the same numbers as a one-process evaluation of its checkpoint.

Sum-based metrics (accuracy, precision, recall, F1, top-k, the confusion matrix) all-reduce their counts;
AUROC gathers every prediction. Both must equal what one process computes over the whole validation split.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import read_scalars, run_app, run_torchrun


@pytest.mark.parametrize("labels, metrics", [
    ("digits", ("accuracy", "precision", "recall", "f1", "top3")),
    ("odd-even", ("auroc", "f1")),
])
def test_two_process_metrics_equal_the_one_process_evaluation(tmp_path, labels, metrics):
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "data.npz"
    y = digits.target if labels == "digits" else digits.target % 2
    np.savez(data, x=(digits.images / 16.0).astype(np.float32)[:, None], y=y.astype(np.int64))
    run = tmp_path / "run"
    result = run_torchrun("--device", "cpu", "--no-progress", "--epochs", "1", "--patience", "0", "--batch-size", "16",
                          "--dataset", f"npz:{data}", "--model", "mlp", "--metrics", ",".join(metrics) + ",confusion_matrix",
                          "--output-dir", str(run))
    assert result.returncode == 0, result.stderr
    checkpoint = next((run / "checkpoints").glob("checkpoint_*.pt"))
    evaluated = run_app("evaluate", str(checkpoint), "--json", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    one_process = json.loads(evaluated.stdout)
    logged = read_scalars(run)
    for name in ("loss", *metrics):
        assert one_process[name] == pytest.approx(logged[f"val/{name}"][-1][1], abs=1e-6), name
    assert sum(map(sum, one_process["confusion_matrix"])) == 359  # every validation sample counted once
