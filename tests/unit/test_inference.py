"""``ignite-app evaluate`` and ``ignite-app predict`` on runs this module trains.

Evaluated metrics are checked against the validation values TensorBoard's reader finds in the
run's event files; predictions against the evaluator (same data, same accuracy or MAE).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error_line, invoke_app, read_scalars, run_app, train_tiny_run
from ignite_app.config import Config
from ignite_app.data.sources import load_splits


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    """The suite's shared run: 2 epochs of the default CNN on digits (read only)."""
    return tiny_run


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """A regression run: 2 epochs of the MLP on the synthetic regression data."""
    return train_tiny_run(tmp_path_factory.mktemp("regression") / "run", "--dataset", "synthetic-regression")


def val_split(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed validation split that training used (and evaluate uses), as raw rows (before preprocessing)."""
    splits = load_splits(Config(dataset=dataset))
    pre, val = splits.preprocess, splits.val
    x = val.x * pre.scale + pre.shift  # digits: x * 16 exactly, the pixels 0..16 as a user has them
    y = pre.outputs(val.y) if pre.task == "regression" else val.y
    return x.numpy(), y.numpy()


def best_model(run_dir: Path) -> Path:
    """The run's single best-model file."""
    [path] = (run_dir / "checkpoints").glob("best_model_*.pt")
    return path


def logged(run_dir: Path, tag: str, step: int) -> float:
    """The value TensorBoard holds for ``tag`` at ``step``."""
    return dict(read_scalars(run_dir)[tag])[step]


def write_csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    """Features (flattened) and optionally the target as the last column, with a header."""
    flat = x.reshape(len(x), -1)
    header = [f"f{i}" for i in range(flat.shape[1])] + (["label"] if y is not None else [])
    rows = flat if y is None else np.column_stack([flat, y])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows.tolist())
    return path


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """(header, values) of a numeric CSV with a header."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


# --- evaluate ----------------------------------------------------------------------------------

@pytest.mark.e2e  # a real process
def test_evaluate_json_is_one_object_with_the_logged_validation_metrics(run_dir):
    step = int(best_model(run_dir).stem.split("_")[-1])
    result = run_app("evaluate", str(run_dir), "--json")  # the real command: stdout must be pure JSON
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"loss", "accuracy"}
    assert metrics["loss"] == pytest.approx(logged(run_dir, "val/loss", step), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(logged(run_dir, "val/accuracy", step), rel=1e-6)  # TensorBoard: float32


def test_evaluate_a_training_checkpoint_prints_a_table(run_dir):
    path = run_dir / "checkpoints" / "checkpoint_23.pt"
    result = invoke_app("evaluate", str(path))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{path} on digits, val split (359 samples)"
    table = dict(re.split(r"\s+", line) for line in lines[2:])
    assert float(table["loss"]) == pytest.approx(logged(run_dir, "val/loss", 23), abs=5e-5)
    assert float(table["accuracy"]) == pytest.approx(logged(run_dir, "val/accuracy", 23), abs=5e-5)


def test_evaluate_on_the_training_split(run_dir):
    result = invoke_app("evaluate", str(run_dir), "--split", "train")
    assert result.exit_code == 0, result.stderr
    assert "digits, train split (1438 samples)" in result.stdout


# --- predict, then evaluate on the same data ---------------------------------------------------

def test_predict_then_evaluate_give_the_same_accuracy(run_dir, tmp_path):
    x, y = val_split("digits")
    result = invoke_app("predict", str(run_dir), "--input", str(write_csv(tmp_path / "val.csv", x, y)),
                        "--output", str(tmp_path / "pred.csv"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"wrote {len(x)} predictions to {tmp_path / 'pred.csv'}"
    header, values = read_csv(tmp_path / "pred.csv")
    assert header == ["label"] + [f"prob_{k}" for k in range(10)]
    labels, probs = values[:, 0].astype(int), values[:, 1:]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4) and (probs.argmax(axis=1) == labels).all()
    evaluated = json.loads(invoke_app("evaluate", str(run_dir), "--json").stdout)
    assert (labels == y).mean() == pytest.approx(evaluated["accuracy"], abs=1e-12)


def test_predict_reads_npz_and_csv_without_target_alike(run_dir, tmp_path):
    x, _ = val_split("digits")
    np.savez(tmp_path / "in.npz", x=x)  # image-shaped (N, 1, 8, 8)
    write_csv(tmp_path / "features.csv", x, None)  # 64 feature columns, no target
    for source, out in (("in.npz", "pred.npz"), ("features.csv", "pred.csv")):
        result = invoke_app("predict", str(run_dir / "checkpoints" / best_model(run_dir).name),
                            "--input", str(tmp_path / source), "--output", str(tmp_path / out))
        assert result.exit_code == 0, result.stderr
    with np.load(tmp_path / "pred.npz") as arrays:
        assert sorted(arrays.files) == ["labels", "probabilities"]
        labels, probs = arrays["labels"], arrays["probabilities"]
    _, values = read_csv(tmp_path / "pred.csv")
    assert (values[:, 0].astype(int) == labels).all()
    assert np.allclose(values[:, 1:], probs, atol=1e-5)


def test_regression_predictions_give_the_evaluated_mae(regression_run, tmp_path):
    x, y = val_split("synthetic-regression")
    np.savez(tmp_path / "val.npz", x=x, y=y)  # y is ignored by predict
    result = invoke_app("predict", str(regression_run), "--input", str(tmp_path / "val.npz"), "--output", str(tmp_path / "out.csv"))
    assert result.exit_code == 0, result.stderr
    header, outputs = read_csv(tmp_path / "out.csv")
    assert header == ["output_0"]
    evaluated = json.loads(invoke_app("evaluate", str(regression_run), "--json").stdout)
    assert set(evaluated) == {"loss", "mae"}
    assert np.abs(outputs[:, 0] - y.reshape(-1)).mean() == pytest.approx(evaluated["mae"], rel=1e-5)  # the targets' units
    scale = float(load_splits(Config(dataset="synthetic-regression")).preprocess.target_scale[0])
    assert (((outputs[:, 0] - y.reshape(-1)) / scale) ** 2).mean() == pytest.approx(evaluated["loss"], rel=1e-4)  # standardised


# --- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def bad_files(run_dir, tmp_path) -> Path:
    """A damaged copy of the run, and input files that do not fit the model."""
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    best = best_model(broken)
    best.write_bytes(best.read_bytes()[:1000])  # truncated: its .sha256 no longer matches
    (tmp_path / "empty").mkdir()
    np.savetxt(tmp_path / "narrow.csv", np.ones((4, 3)), delimiter=",")
    (tmp_path / "words.csv").write_text("a,b\n1,x\n")
    np.savez(tmp_path / "nox.npz", inputs=np.ones((2, 64)))
    np.savez(tmp_path / "narrow.npz", x=np.ones((2, 10)))
    np.savez(tmp_path / "other.npz", x=np.ones((20, 10)), y=np.arange(20) % 2)
    (tmp_path / "in.json").write_text("{}")
    np.savetxt(tmp_path / "ok.csv", np.ones((2, 64)), delimiter=",")
    np.savez(tmp_path / "nan.npz", x=np.full((2, 1, 8, 8), np.nan))
    return tmp_path


BAD_INPUTS = [
    (["evaluate", "{tmp}/missing"], "no such file or directory"),
    (["evaluate", "{tmp}/empty"], "not a run directory of ignite-app"),
    (["evaluate", "{tmp}/ok.csv"], "must sit in the checkpoints/ folder"),
    (["evaluate", "{tmp}/broken"], "SHA-256 does not match"),
    (["evaluate", "{run}", "--split", "test"], "--split test: this run has no test set"),
    (["evaluate", "{run}", "--split", "everything"], "Invalid value for '--split'"),
    (["evaluate", "{run}", "--dataset", "npz:{tmp}/narrow.npz"], "has no array named 'y'"),
    (["evaluate", "{run}", "--dataset", "npz:{tmp}/other.npz"], "has samples of shape (10,), but the model takes (1, 8, 8)"),
    (["evaluate", "{run}", "--dataset", "synthetic-regression"], "which is not one of the model's classes (0, 1, 2"),
    (["predict", "{run}", "--input", "{tmp}/narrow.csv", "--output", "{tmp}/p.csv"], "has 3 columns, but the model takes 64 features"),
    (["predict", "{run}", "--input", "{tmp}/words.csv", "--output", "{tmp}/p.csv"], "column 'b' holds words, but the model takes numbers only"),
    (["predict", "{run}", "--input", "{tmp}/nox.npz", "--output", "{tmp}/p.csv"], "has no array named 'x'"),
    (["predict", "{run}", "--input", "{tmp}/narrow.npz", "--output", "{tmp}/p.csv"], "the model takes 64 features"),
    (["predict", "{run}", "--input", "{tmp}/nan.npz", "--output", "{tmp}/p.csv"], "nan.npz has NaN or infinite inputs"),
    (["predict", "{run}", "--input", "{tmp}/in.json", "--output", "{tmp}/p.csv"], "unsupported file type '.json'"),
    (["predict", "{run}", "--input", "{tmp}/absent.csv", "--output", "{tmp}/p.csv"], "does not exist"),
    (["predict", "{run}", "--input", "{tmp}/ok.csv", "--output", "{tmp}/p.txt"], "unsupported file type '.txt'"),
    (["predict", "{run}", "--input", "{tmp}/ok.csv"], "Missing option '--output'"),
    (["predict", "{tmp}/broken", "--input", "{tmp}/ok.csv", "--output", "{tmp}/p.csv"], "SHA-256 does not match"),
]


@pytest.mark.parametrize("args, match", BAD_INPUTS, ids=[" ".join(a[:2] + a[-1:]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_dir, bad_files, args, match):
    before = sorted(p.name for p in bad_files.iterdir())
    result = invoke_app(*[a.format(tmp=bad_files, run=run_dir) for a in args])
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert sorted(p.name for p in bad_files.iterdir()) == before

