"""npz: files over the memory budget, streamed from inside the zip like npy:DIR; tables and small files in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_error_line, invoke_app, train_in_process, trained_weights
from ignite_app.config import Config
from ignite_app.data.npz_stream import NpzStreamDataset, member_layout
from ignite_app.data.select import load_splits
from ignite_app.data.sources import ArrayDataset


def write_npz(path: Path, x: np.ndarray, y: np.ndarray, compressed: bool = False) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    return path


def signals(n: int = 480, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """n samples of (1, 24, 24), over 1 MiB as float32; the class is the brightness."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, 1, 24, 24)) + 60 * y[:, None, None, None]
    return x.astype(dtype), y.astype(np.int64)


def test_a_member_is_found_in_place_inside_the_zip(tmp_path):
    x, y = signals(20)
    layout, compressed, fortran = member_layout(write_npz(tmp_path / "d.npz", x, y), "x")
    assert not compressed and not fortran and layout.shape == x.shape and layout.dtype == x.dtype
    on_disk = np.fromfile(layout.path, dtype=np.uint8, count=x.nbytes, offset=layout.offset)
    assert np.array_equal(on_disk.view(np.float32).reshape(x.shape), x)
    assert member_layout(write_npz(tmp_path / "c.npz", x, y, compressed=True), "x")[1]


@pytest.mark.parametrize("dtype, task", [(np.float32, "auto"), (np.uint8, "auto"), (np.float64, "regression")])
def test_streamed_npz_holds_the_in_memory_batches_and_preprocessing(tmp_path, dtype, task):
    x, y = signals(2000 if dtype is np.uint8 else 480, dtype)  # over 1 MiB
    data = write_npz(tmp_path / "d.npz", x, y)
    memory = load_splits(Config(dataset=f"npz:{data}", task=task))
    streamed = load_splits(Config(dataset=f"npz:{data}", task=task, memory_budget_mb=1))
    assert isinstance(memory.train, ArrayDataset) and isinstance(streamed.train, NpzStreamDataset)
    assert streamed.preprocess.same_as(memory.preprocess) and streamed.spec == memory.spec
    for got, want in ((streamed.train, memory.train), (streamed.val, memory.val)):
        batch = got.__getitems__(list(range(len(got))))
        assert torch.equal(batch[0], want.x) and torch.equal(batch[1], want.y)
    again = load_splits(Config(dataset=f"npz:{data}", memory_budget_mb=1), streamed.preprocess)  # evaluate's way
    assert isinstance(again.val, NpzStreamDataset) and torch.equal(again.val.__getitems__([0, 5])[0], memory.val.x[[0, 5]])


def test_a_small_npz_forced_to_stream_trains_bit_identically(tmp_path):
    x, y = signals()
    data = write_npz(tmp_path / "d.npz", x, y)
    memory = train_in_process(tmp_path / "m", dataset=f"npz:{data}", batch_size=32)
    streamed = train_in_process(tmp_path / "s", dataset=f"npz:{data}", batch_size=32, memory_budget_mb=1)
    assert isinstance(memory.splits.train, ArrayDataset) and isinstance(streamed.splits.train, NpzStreamDataset)
    wm, ws = trained_weights(memory), trained_weights(streamed)
    assert wm.keys() == ws.keys() and all(torch.equal(wm[k], ws[k]) for k in wm)
    assert float(streamed.evaluator.state.metrics["accuracy"]) > 0.5  # it learned something


def test_nan_rows_are_dropped_or_refused_as_in_memory(tmp_path):
    x, y = signals()
    x[7, 0, 3, 3] = np.nan
    data = write_npz(tmp_path / "d.npz", x, y)
    dropped = load_splits(Config(dataset=f"npz:{data}", memory_budget_mb=1, na="drop"))
    assert len(dropped.train) + len(dropped.val) == len(x) - 1 and "dropped 1 row(s)" in dropped.notes[0]
    result = invoke_app("train", "--dataset", f"npz:{data}", "--memory-budget-mb", "1", "--na", "error",
                        "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "row 8 has a missing value")


def test_tables_and_data_within_the_budget_stay_in_memory(tmp_path, capsys):
    table = write_npz(tmp_path / "t.npz", np.random.default_rng(0).standard_normal((50_000, 4)), np.arange(50_000) % 2)
    assert isinstance(load_splits(Config(dataset=f"npz:{table}", memory_budget_mb=1)).train, ArrayDataset)
    assert "a (samples, features) table is standardised in memory whole" in capsys.readouterr().err
    x, y = signals()
    small = write_npz(tmp_path / "s.npz", x, y, compressed=True)
    assert isinstance(load_splits(Config(dataset=f"npz:{small}", memory_budget_mb=16)).train, ArrayDataset)


def test_a_compressed_npz_over_the_budget_is_one_error_line(tmp_path):
    x, y = signals()
    data = write_npz(tmp_path / "d.npz", x, y, compressed=True)
    result = invoke_app("train", "--dataset", f"npz:{data}", "--memory-budget-mb", "1", "--output-dir", str(tmp_path / "run"))
    line = assert_one_error_line(result.exit_code, result.stderr, result.output, "compressed, so it cannot be read batch by batch")
    assert "numpy.savez (not savez_compressed)" in line and "npy:DIR" in line
    assert not (tmp_path / "run").exists()
