"""The fast paths of ``evaluate`` and ``predict`` (issue 16) give the results of the slow ones:
large batches, ``--batch-size``, the vectorised CSV writer, and train's fast start-up."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, assert_one_error_line, cli_env, invoke_app, train_tiny_run
from ignite_app.data.sources import load_splits
from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.tools import batching
from ignite_app.tools.inference import csv_bytes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """2 epochs of the default CNN on digits."""
    return train_tiny_run(tmp_path_factory.mktemp("inference-speed") / "run")


def read_back(data: bytes) -> tuple[list[str], list[str], np.ndarray]:
    """A prediction CSV read one value at a time with the csv module: header, first column, float32 values."""
    header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    return header, [row[0] for row in rows], np.array([[np.float32(float(v)) for v in row] for row in rows])


PROBS = np.random.default_rng(0).random((3, 10), dtype=np.float32)
OUTPUTS = np.array([[1e-30, -0.0], [123456789.0, 0.1], [-2.5e7, 1 / 3], [np.nan, -np.inf], [3.4e38, 1e-45]], dtype=np.float32)


def test_the_csv_writer_gives_back_every_probability_and_label_exactly():
    header, labels, values = read_back(csv_bytes({"labels": np.array([3, 0, 9]), "probabilities": PROBS}))
    assert header == ["label"] + [f"prob_{k}" for k in range(10)]
    assert labels == ["3", "0", "9"]
    assert np.array_equal(values[:, 1:], PROBS)  # bit for bit: the shortest exact form, not 6 digits


def test_the_csv_writer_gives_back_regression_outputs_exactly_nan_and_infinity_included():
    header, _, values = read_back(csv_bytes({"outputs": OUTPUTS}))
    assert header == ["output_0", "output_1"]
    assert np.array_equal(values, OUTPUTS, equal_nan=True)
    assert np.signbit(values[0, 1])  # -0.0 stays negative


def test_the_csv_writer_quotes_class_names_with_commas_quotes_and_line_breaks():
    names = ["a,b", 'say "hi"', "x\ny", "é"]
    pre = SimpleNamespace(classes=names)
    data = csv_bytes({"labels": np.array(names)[[2, 0, 1, 3]], "probabilities": PROBS[:, :4][[0, 1, 2, 0]]}, pre)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows[0] == ["label"] + [f"prob_{name}" for name in names]
    assert [row[0] for row in rows[1:]] == ["x\ny", "a,b", 'say "hi"', "é"]
    assert np.array_equal(np.array([[np.float32(v) for v in row[1:]] for row in rows[1:]]), PROBS[:, :4][[0, 1, 2, 0]])


def test_the_default_batch_is_4096_unless_memory_is_short(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(batching, "free_memory", lambda device: 64 * 2**30)
    assert batching.inference_batch_size((1, 8, 8), cpu) == 4096
    monkeypatch.setattr(batching, "free_memory", lambda device: 2**20)  # 1 MiB free: 8 samples of 64 x 64 x 4 bytes
    assert batching.inference_batch_size((1, 8, 8), cpu) == 8
    assert batching.inference_batch_size((3, 512, 512), cpu) == 1
    assert batching.inference_batch_size((1, 8, 8), cpu, asked=5) == 5


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_bad_batch_size_is_one_error_line(run_dir, tmp_path, command):
    extra = ["--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "out.csv")] if command == "predict" else []
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 8, 8), dtype=np.float32))
    result = invoke_app(command, str(run_dir), *extra, "--batch-size", "0")
    assert_one_error_line(result.exit_code, result.stderr, result.output, "invalid --batch-size 0: expected an integer >= 1")
    assert not (tmp_path / "out.csv").exists()


def test_evaluate_gives_the_same_metrics_at_any_batch_size(run_dir):
    small = json.loads(invoke_app("evaluate", str(run_dir), "--json", "--batch-size", "7").stdout)
    large = json.loads(invoke_app("evaluate", str(run_dir), "--json").stdout)
    assert small["accuracy"] == large["accuracy"]
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-5)


def test_predict_gives_the_same_predictions_at_any_batch_size(run_dir, tmp_path):
    x = load_splits(Config(dataset="digits")).val.x.numpy()
    np.savez(tmp_path / "x.npz", x=x)
    for batch, name in (("7", "small.npz"), (None, "large.npz")):
        extra = ["--batch-size", batch] if batch else []
        result = invoke_app("predict", str(run_dir), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / name), *extra)
        assert result.exit_code == 0, result.stderr
    with np.load(tmp_path / "small.npz") as small, np.load(tmp_path / "large.npz") as large:
        assert (small["labels"] == large["labels"]).all()
        np.testing.assert_allclose(small["probabilities"], large["probabilities"], rtol=1e-5, atol=1e-7)


@pytest.mark.e2e  # a real process: what a fresh command imports
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_inference_commands_start_like_train_without_fsdp_and_dtensor(run_dir, tmp_path, command):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 8, 8), dtype=np.float32))
    args = [command, str(run_dir)] + (["--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "p.csv")]
                                      if command == "predict" else ["--json"])
    code = ("import sys\nfrom ignite_app.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint([m for m in ('torch.distributed.optim', 'pandas') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, *args], env=cli_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # neither FSDP/DTensor (0.7 s) nor, for NPZ in and CSV out, pandas (0.25 s; pyarrow.array() would import it)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("kind", ["table", "array"])
def test_preprocessed_inputs_equal_the_numeric_step_module_bit_for_bit(kind):
    from ignite_app.data.preprocess import fit, rows_from_arrays

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((200, 5)) * [1, 10, 1e3, 1e-3, 7] + [0, 5, -3e3, 1, 2]).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing cells: filled with the training medians
    rows = rows_from_arrays(x, rng.integers(0, 3, 200))
    pre = fit(rows, "classification", ["0", "1", "2"], kind=kind, standardize=True, na="impute")
    expected = pre.numeric_step(torch.as_tensor(rows.numeric, dtype=torch.float32))
    assert rows.numeric.dtype == np.float32  # float32 files are not copied to float64
    assert torch.equal(pre.inputs(rows, "test"), expected)
    x[3, 2] = np.inf
    with pytest.raises(UserError, match="test has NaN or infinite inputs"):
        pre.inputs(rows_from_arrays(x, None), "test")
