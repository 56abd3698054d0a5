"""The real commands on a real public table (scikit-learn's iris, exported as a user would): train with the
default flags, then predict and evaluate on its raw rows; a malformed file is one line and exit code 2."""

from __future__ import annotations

import json

import pandas as pd

from conftest import assert_one_error_line, run_app, run_train


def test_default_command_on_a_csv_then_predict_names_and_evaluate_every_row(tmp_path):
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.assign(target=[bunch.target_names[t] for t in bunch.target])
    frame.to_csv(tmp_path / "iris.csv")  # pandas' default: with its unnamed index column
    result = run_train("--no-progress", "--dataset", f"csv:{tmp_path / 'iris.csv'}", "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith("classification on csv:") and "3 classes (setosa, versicolor, virginica), 4 features" in first
    assert rest[0].startswith("dropped the first column of iris.csv")
    predicted = run_app("predict", str(tmp_path / "run"), "--input", str(tmp_path / "iris.csv"), "--output", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    labels = pd.read_csv(tmp_path / "p.csv")["label"]
    evaluated = run_app("evaluate", str(tmp_path / "run"), "--dataset", str(tmp_path / "iris.csv"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy = json.loads(evaluated.stdout)["accuracy"]  # every row of the file
    assert set(labels) <= {"setosa", "versicolor", "virginica"} and len(labels) == 150
    assert (labels == frame["target"]).mean() == accuracy > 0.9


def test_a_malformed_csv_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "bad.csv.gz").write_bytes(b"this is not gzip")
    result = run_train("--no-progress", "--dataset", f"csv:{tmp_path / 'bad.csv.gz'}", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "cannot be read")
    assert not (tmp_path / "run").exists()
