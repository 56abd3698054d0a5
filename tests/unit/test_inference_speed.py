"""The fast paths of ``evaluate`` and ``predict`` (issue 16) give the results of the slow ones:
large batches, ``--batch-size``, the vectorised CSV writer, and train's fast start-up."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, assert_one_error_line, cli_env, invoke_app, train_tiny_run
from ignite_app.data.sources import load_splits
from ignite_app.config import Config
from ignite_app.tools import batching
from ignite_app.tools.inference import csv_bytes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """2 epochs of the default CNN on digits."""
    return train_tiny_run(tmp_path_factory.mktemp("inference-speed") / "run")


def reference_csv(arrays: dict[str, np.ndarray]) -> bytes:
    """The CSV written one value at a time, as the writer did before it was vectorised."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if "labels" in arrays:
        probs = arrays["probabilities"]
        writer.writerow(["label"] + [f"prob_{k}" for k in range(probs.shape[1])])
        writer.writerows([str(int(label))] + [f"{p:.6g}" for p in row] for label, row in zip(arrays["labels"], probs))
    else:
        writer.writerow([f"output_{k}" for k in range(arrays["outputs"].shape[1])])
        writer.writerows([f"{v:.7g}" for v in row] for row in arrays["outputs"])
    return out.getvalue().encode()


@pytest.mark.parametrize("arrays", [
    {"labels": np.array([3, 0, 9]), "probabilities": np.random.default_rng(0).random((3, 10), dtype=np.float32)},
    {"outputs": np.array([[1e-30, -0.0], [123456789.0, 0.1], [-2.5e7, 1 / 3]], dtype=np.float32)},
], ids=["classification", "regression"])
def test_the_vectorised_csv_writer_writes_the_same_bytes_as_one_value_at_a_time(arrays):
    assert csv_bytes(arrays) == reference_csv(arrays)


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
            "    assert not e.code, e.code\nprint('loaded' if 'torch.distributed.optim' in sys.modules else 'not loaded')")
    done = subprocess.run([sys.executable, "-c", code, *args], env=cli_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "not loaded"
