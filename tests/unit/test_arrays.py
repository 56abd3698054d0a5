"""npy: datasets read through memory maps; in memory when they fit the budget, streamed batch by batch when not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_in_process, trained_weights
from ignite_app.config import Config
from ignite_app.data import arrays
from ignite_app.data.arrays import PixelSplits, StreamingArrayDataset, array_dataset
from ignite_app.data.select import load_splits
from ignite_app.data.sources import ArrayDataset
from ignite_app.errors import UserError


def write_npy(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return folder


def pixels(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 90, (n, 3, 8, 8), dtype=np.uint8)
    x[np.arange(n), y] += 150  # the class is the bright channel
    return x, y.astype(np.int64)


def test_float_features_and_integer_labels_split_like_npz(tmp_path):
    x = np.random.default_rng(1).standard_normal((50, 7))
    data = write_npy(tmp_path / "d", x, np.arange(50) % 4)
    splits = load_splits(Config(dataset=f"npy:{data}"))
    assert splits.spec.task == "classification" and splits.spec.num_outputs == 4 and splits.spec.input_shape == (7,)
    assert len(splits.train) == 40 and len(splits.val) == 10
    assert splits.train.x.dtype == torch.float32 and not isinstance(splits, PixelSplits)
    regression = load_splits(Config(dataset=f"npy:{write_npy(tmp_path / 'r', x, x[:, 0] * 2)}"))
    assert regression.spec.task == "regression" and regression.train.y.shape == (40, 1)


def test_streaming_and_in_memory_datasets_hold_the_same_rows(tmp_path):
    x, y = pixels()
    data = write_npy(tmp_path / "d", x, y)
    rows = np.array([1, 5, 6, 40])
    memory = array_dataset(data / "x.npy", rows, torch.from_numpy(y[rows]), in_memory=True)
    stream = array_dataset(data / "x.npy", rows, torch.from_numpy(y[rows]), in_memory=False)
    assert isinstance(memory, ArrayDataset) and isinstance(stream, StreamingArrayDataset)
    got, want = stream.__getitems__([3, 0, 2]), memory.__getitems__([3, 0, 2])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(memory.x, torch.from_numpy(x[rows]))


def test_uint8_images_are_normalised_in_the_model_and_stream_exactly(tmp_path, monkeypatch):
    x, y = pixels()
    data = write_npy(tmp_path / "d", x, y)
    options = {"dataset": f"npy:{data}", "batch_size": 8, "augment": "on"}
    memory = train_in_process(tmp_path / "m", epochs=2, **options)
    assert isinstance(memory.splits, PixelSplits) and isinstance(memory.splits.train, ArrayDataset)
    monkeypatch.setattr(arrays, "fits_in_memory", lambda path, rows, budget: False)
    streamed = train_in_process(tmp_path / "s", epochs=2, **options)
    assert isinstance(streamed.splits.train, StreamingArrayDataset)
    wm, ws = trained_weights(memory), trained_weights(streamed)
    assert "pixel_mean" in wm and all(torch.equal(wm[k], ws[k]) for k in wm)
    assert float(memory.evaluator.state.metrics["accuracy"]) > 0.5


def test_a_streamed_dataset_pickles_for_dataloader_workers(tmp_path):
    import pickle

    x, y = pixels(10)
    data = write_npy(tmp_path / "d", x, y)
    ds = StreamingArrayDataset(data / "x.npy", np.arange(10), torch.from_numpy(y))
    ds[0]  # opens the file
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[9][0], torch.from_numpy(x[9]))


@pytest.mark.parametrize("case, match", [
    ("no-x", "x.npy' does not exist"),
    ("lengths", "give one target per sample"),
    ("object", "cannot be read"),
    ("target", "--target only applies to csv"),
    ("augment-floats", "--augment needs uint8 images"),
])
def test_bad_npy_data_is_one_clear_error(tmp_path, case, match):
    folder = tmp_path / "d"
    x, y = np.zeros((10, 3), np.float32), np.arange(10)
    if case == "lengths":
        y = y[:7]
    write_npy(folder, x, y)
    if case == "no-x":
        (folder / "x.npy").unlink()
    if case == "object":
        np.save(folder / "x.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    extra = {"target": "0"} if case == "target" else {"augment": "on"} if case == "augment-floats" else {}
    with pytest.raises(UserError, match=match):
        load_splits(Config(dataset=f"npy:{folder}", **extra))
