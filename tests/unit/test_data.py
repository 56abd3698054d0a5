"""Datasets (built-in, CSV, NPZ, the user's own by import path) and the loaders that batch them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ignite_app.config import Config
from ignite_app.data.sources import ArrayDataset, load_splits
from ignite_app.errors import UserError
from ignite_app.data.loaders import EpochSampler, InMemoryLoader, epoch_length, make_loader


def splits_of(**changes):
    return load_splits(Config(**changes))


def all_rows(splits):
    """Every (x, y) sample of both splits, as numpy arrays."""
    x = torch.cat([splits.train.x, splits.val.x]).numpy()
    y = torch.cat([splits.train.y, splits.val.y]).numpy()
    return x, y


# --- built-in datasets -------------------------------------------------------------------------

def test_digits_shapes_and_split():
    s = splits_of()
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs, s.spec.is_image) == ("classification", (1, 8, 8), 10, True)
    assert (len(s.train), len(s.val)) == (1438, 359)
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert 0.0 <= float(s.train.x.min()) and float(s.train.x.max()) <= 1.0
    assert set(s.val.y.tolist()) == set(range(10))


def test_digits_split_is_fixed_whatever_the_seed():
    a, b = splits_of(seed=0), splits_of(seed=123)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)


def test_synthetic_regression():
    s = splits_of(dataset="synthetic-regression")
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs, s.spec.is_image) == ("regression", (16,), 1, False)
    assert (len(s.train), len(s.val)) == (1600, 400)
    assert s.train.y.shape == (1600, 1) and s.train.y.dtype == torch.float32
    assert torch.equal(s.val.y, splits_of(dataset="synthetic-regression", seed=9).val.y)


@pytest.mark.parametrize("dataset", ["digits", "synthetic-regression", "npz:d.npz", "mypkg.data:get"])
def test_target_is_refused_for_anything_but_csv(dataset):
    with pytest.raises(UserError, match=rf"--target only applies to csv: datasets, not '{dataset}'; remove it"):
        splits_of(dataset=dataset, target="0")


# --- CSV ---------------------------------------------------------------------------------------

def write_csv(path, header=True, n=20):
    """Columns f1 = i, f2 = 100 + i, label = i % 2: each column is recognisable after the split."""
    lines = ["f1,f2,label"] if header else []
    lines += [f"{i},{100 + i},{i % 2}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_csv_default_target_is_the_last_column(tmp_path, header):
    s = splits_of(dataset=f"csv:{write_csv(tmp_path / 'd.csv', header)}", standardize=False)
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs) == ("classification", (2,), 2)
    x, y = all_rows(s)
    assert len(x) == 20 and (len(s.train), len(s.val)) == (16, 4)
    assert np.array_equal(x[:, 1] - 100, x[:, 0]) and np.array_equal(y, x[:, 0].astype(np.int64) % 2)


@pytest.mark.parametrize("target", ["f1", "0", "-3"])
def test_csv_target_by_name_or_index(tmp_path, target):
    s = splits_of(dataset=f"csv:{write_csv(tmp_path / 'd.csv')}", target=target, standardize=False)
    assert s.spec.task == "regression"  # 20 distinct integers: a value, not a class
    x, y = all_rows(s)
    assert np.array_equal(y[:, 0], x[:, 0] - 100)  # the remaining columns are f2, label


def test_csv_target_by_index_without_header(tmp_path):
    s = splits_of(dataset=f"csv:{write_csv(tmp_path / 'd.csv', header=False)}", target="1", standardize=False)
    x, y = all_rows(s)
    assert np.array_equal(y[:, 0], x[:, 0] + 100)


@pytest.mark.parametrize(
    "target, header, match",
    [("nope", True, r"--target 'nope' is not a column of '.*d.csv'; columns are f1, f2, label"),
     ("3", True, r"--target '3' is not a column of '.*d.csv'; columns are f1, f2, label"),
     ("label", False, r"--target 'label' is not a column of '.*d.csv'; use a column index from 0 to 2")],
)
def test_csv_bad_target_column(tmp_path, target, header, match):
    with pytest.raises(UserError, match=match):
        splits_of(dataset=f"csv:{write_csv(tmp_path / 'd.csv', header)}", target=target)


@pytest.mark.parametrize(
    "text, match",
    [
        ("a,b\n1,2\n3,x\n", r"non-numeric value 'x' in row 3, column 2 \('b'\), a column of numbers; fix the cell"),
        ("a,b\n1,2\n3\n", r"row 3 has 1 columns, expected 2"),
        ("", r"CSV file .*bad.csv. is empty; it needs rows"),
        ("\n \n", r"CSV file .*bad.csv. is empty; it needs rows"),
        ("a\n1\n2\n", r"has one column; it needs features and a target column"),
        ("a,b\n", r"has a header but no rows; it needs rows of values"),
        ("a,b\n1,2\n", r"has 1 sample\(s\); it needs at least 2"),
    ],
)
def test_csv_bad_files(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        splits_of(dataset=f"csv:{path}")


def test_missing_inputs_are_imputed_or_refused_with_the_row(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,0\nnan,3,1\n4,5,0\n")
    with pytest.raises(UserError, match=r"dataset 'csv:.*d.csv': row 3 has a missing value; fill it, or pass --na impute"):
        splits_of(dataset=f"csv:{tmp_path / 'd.csv'}", na="error")
    s = splits_of(dataset=f"csv:{tmp_path / 'd.csv'}", task="classification", standardize=False)
    assert any("filled 1 row(s)" in note for note in s.notes)
    x, _ = all_rows(s)
    fill = float(s.preprocess.fill[0])  # the median of column a over the training rows that have it
    assert np.isfinite(x).all() and fill in (1.0, 2.5, 4.0) and sorted(x[:, 0].tolist()) == sorted([1.0, 4.0, fill])
    np.savez(tmp_path / "d.npz", x=np.array([[1.0], [np.inf], [2.0]]), y=np.arange(3))
    with pytest.raises(UserError, match=r"dataset 'npz:.*d.npz' has NaN or infinite inputs; clean the data"):
        splits_of(dataset=f"npz:{tmp_path / 'd.npz'}")


def test_csv_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"CSV file '.*missing.csv' does not exist; check the path after csv:"):
        splits_of(dataset=f"csv:{tmp_path / 'missing.csv'}")


# --- NPZ ---------------------------------------------------------------------------------------

def test_npz_reads_x_and_y(tmp_path):
    x = np.arange(30 * 3, dtype=np.float64).reshape(30, 3)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3)
    s = splits_of(dataset=f"npz:{tmp_path / 'd.npz'}", standardize=False)
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs) == ("classification", (3,), 3)
    xs, ys = all_rows(s)
    assert xs.dtype == np.float32 and np.array_equal(ys, (xs[:, 0] / 3).astype(np.int64) % 3)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((5, 2))}, r"has no array named 'y' \(it has: x\); save inputs as x and targets as y"),
        ({"inputs": np.zeros((5, 2)), "y": np.zeros(5)}, r"has no array named 'x' \(it has: inputs, y\)"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(4)}, r"x has 5 samples but y has 4; give one target per sample"),
        ({"x": np.array(["a", "b"]), "y": np.zeros(2)}, r"x and y must be numeric arrays"),
        ({"x": np.array([1, "a"], dtype=object), "y": np.zeros(2)}, r"cannot be read \(.*\); write it with numpy.savez"),
        ({"x": np.float32(3.0), "y": np.float32(1.0)}, r"x and y must hold one row per sample, not a single number"),
    ],
)
def test_npz_bad_files(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=match):
        splits_of(dataset=f"npz:{tmp_path / 'd.npz'}")


def test_npz_missing_or_not_an_archive(tmp_path):
    with pytest.raises(UserError, match=r"NPZ file '.*d.npz' does not exist; check the path after npz:"):
        splits_of(dataset=f"npz:{tmp_path / 'd.npz'}")
    (tmp_path / "d.npz").write_text("not an archive")
    with pytest.raises(UserError, match=r"NPZ file '.*d.npz' cannot be read"):
        splits_of(dataset=f"npz:{tmp_path / 'd.npz'}")


# --- task inference ----------------------------------------------------------------------------

def save_npz(tmp_path, y):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((len(y), 4)), y=np.asarray(y))
    return f"npz:{tmp_path / 'd.npz'}"


def test_real_targets_infer_regression(tmp_path):
    s = load_splits(Config(dataset=save_npz(tmp_path, np.linspace(0, 1, 40))))
    assert (s.spec.task, s.spec.num_outputs) == ("regression", 1)


def test_classification_on_real_targets_fails_clearly(tmp_path):
    name = save_npz(tmp_path, np.linspace(0, 1, 40))
    with pytest.raises(UserError, match=r"--task classification needs class labels \(whole numbers or words\) as targets; "
                                        r"use --task regression for real-valued targets"):
        load_splits(Config(dataset=name, task="classification"))


@pytest.mark.parametrize("labels, names", [
    (np.arange(40) % 3 - 1, ["-1", "0", "1"]),  # -1/0/+1
    (np.arange(40) % 2 * 2 - 1.0, ["-1", "1"]),  # -1./+1. floats
    (np.arange(40) % 3 + 1, ["1", "2", "3"]),  # 1..K: no empty class 0
    (np.arange(40) % 3 + 0.0, ["0", "1", "2"]),  # 0./1./2.
])
def test_whole_number_labels_of_any_kind_become_classes_0_to_k_with_their_names(tmp_path, labels, names):
    s = load_splits(Config(dataset=save_npz(tmp_path, labels)))
    assert (s.spec.task, s.spec.num_outputs, s.preprocess.classes) == ("classification", len(names), names)
    _, y = all_rows(s)
    assert sorted(set(y.tolist())) == list(range(len(names)))


def test_regression_can_be_forced_on_integer_labels(tmp_path):
    name = save_npz(tmp_path, np.arange(40) % 4)
    assert load_splits(Config(dataset=name)).spec.task == "classification"
    forced = load_splits(Config(dataset=name, task="regression"))
    assert (forced.spec.task, forced.spec.num_outputs, forced.train.y.dtype) == ("regression", 1, torch.float32)


def test_many_distinct_integers_are_a_regression(tmp_path):
    assert load_splits(Config(dataset=save_npz(tmp_path, np.arange(40)))).spec.task == "regression"


def test_single_class_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"has a single class; classification needs at least 2"):
        load_splits(Config(dataset=save_npz(tmp_path, np.zeros(40, dtype=np.int64)), task="classification"))


def test_rows_without_a_target_are_dropped_or_refused(tmp_path):
    y = np.linspace(0, 1, 40)
    y[3] = np.nan
    s = load_splits(Config(dataset=save_npz(tmp_path, y)))
    assert len(s.train) + len(s.val) == 39 and any("dropped 1 row(s)" in note for note in s.notes)
    with pytest.raises(UserError, match=r"row 4 has no target value; fill it, or pass --na drop"):
        load_splits(Config(dataset=save_npz(tmp_path, y), na="error"))


# --- the user's own dataset by import path -----------------------------------------------------

USER_DATA = """
    import torch
    from torch.utils.data import Dataset, TensorDataset

    CALLS = []

    def tensors(train):
        CALLS.append(train)
        n = 40 if train else 10
        x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
        return TensorDataset(x, torch.arange(n) % 4)

    class Squares(Dataset):
        def __init__(self, train):
            self.n = 30 if train else 6
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            return torch.full((2,), float(i)), torch.tensor([float(i * i), float(-i)])

    class Labelled(Squares):
        num_classes = 7
        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 3

    def broken(train):
        raise FileNotFoundError("data/train.bin")

    def nothing(train):
        return None

    def singles(train):
        return [torch.zeros(3)] * 4

    def empty(train):
        return TensorDataset(torch.zeros(0, 3), torch.zeros(0))
"""


def test_user_factory_gets_train_true_and_false_and_tensor_data_becomes_arrays(user_module):
    import importlib

    name = user_module(USER_DATA)
    s = load_splits(Config(dataset=f"{name}:tensors"))
    assert importlib.import_module(name).CALLS == [True, False]
    assert isinstance(s.train, ArrayDataset) and isinstance(s.val, ArrayDataset)
    assert (len(s.train), len(s.val)) == (40, 10)
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs) == ("classification", (3,), 4)


def test_user_map_style_dataset_stays_on_the_dataloader_path(user_module):
    s = load_splits(Config(dataset=f"{user_module(USER_DATA)}:Squares"))
    assert not isinstance(s.train, ArrayDataset) and (len(s.train), len(s.val)) == (30, 6)
    assert (s.spec.task, s.spec.input_shape, s.spec.num_outputs) == ("regression", (2,), 2)
    sampler = EpochSampler(len(s.train), seed=0, shuffle=False)
    loader = make_loader(s.train, 8, sampler, in_memory=True, num_workers=0, device=torch.device("cpu"), seed=0)
    assert isinstance(loader, DataLoader)
    x, y = next(iter(loader))
    assert x.shape == (8, 2) and torch.equal(y[:, 0], x[:, 0] ** 2)


def test_user_dataset_num_classes_attribute_is_used(user_module):
    s = load_splits(Config(dataset=f"{user_module(USER_DATA)}:Labelled"))
    assert (s.spec.task, s.spec.num_outputs) == ("classification", 7)


def test_user_dataset_regression_can_be_forced(user_module):
    s = load_splits(Config(dataset=f"{user_module(USER_DATA)}:tensors", task="regression"))
    assert (s.spec.task, s.spec.num_outputs) == ("regression", 1)


@pytest.mark.parametrize(
    "attr, task, match",
    [
        ("broken", "auto", r"--dataset {name}:broken\(train=True\) failed: FileNotFoundError: data/train.bin"),
        ("nothing", "auto", r"--dataset {name}:nothing returned an empty or unsized train dataset; return a map-style Dataset"),
        ("empty", "auto", r"--dataset {name}:empty returned an empty or unsized train dataset"),
        ("singles", "auto", r"--dataset {name}:singles: items must be \(input, target\) pairs"),
        ("Squares", "classification", r"--dataset {name}:Squares: classification needs integer class labels as targets"),
        ("missing", "auto", r"--dataset {name}:missing: module '{name}' has no attribute 'missing'"),
    ],
)
def test_user_dataset_errors(user_module, attr, task, match):
    name = user_module(USER_DATA)
    with pytest.raises(UserError, match=match.format(name=name)):
        load_splits(Config(dataset=f"{name}:{attr}", task=task))


def test_user_dataset_module_not_found(user_module):
    with pytest.raises(UserError, match=r"--dataset nosuchpkg.data:get: cannot import 'nosuchpkg.data' .*; "
                                        r"run from the folder that holds it or install it"):
        load_splits(Config(dataset="nosuchpkg.data:get"))


# --- loaders -----------------------------------------------------------------------------------

def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=3, shuffle=True), EpochSampler(50, seed=3, shuffle=True)
    list(a)  # iterating does not advance anything
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    orders = set()
    for seed, epoch in [(3, 0), (3, 1), (4, 2), (3, 2)]:
        s = EpochSampler(50, seed=seed, shuffle=True)
        s.set_epoch(epoch)
        orders.add(tuple(s))
    assert len(orders) == 4


def test_epoch_sampler_without_shuffle_is_in_order():
    s = EpochSampler(7, seed=1, shuffle=False)
    s.set_epoch(5)
    assert list(s) == list(range(7))


def test_epoch_sampler_start_skips_the_visited_part():
    s = EpochSampler(50, seed=0, shuffle=True)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start=20)
    assert list(s) == full[20:] and len(s) == 30 and s.full_length() == 50


@pytest.mark.parametrize("size, world", [(10, 3), (9, 3), (5, 4)])
def test_unpadded_shards_cover_every_sample_once(size, world):
    shards = []
    for rank in range(world):
        s = EpochSampler(size, seed=0, shuffle=True, rank=rank, world_size=world, pad=False)
        s.set_epoch(3)
        shards += list(s)
    assert sorted(shards) == list(range(size))


def test_padded_shards_have_equal_length():
    shards = [list(EpochSampler(10, seed=0, shuffle=True, rank=r, world_size=3, pad=True)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(sum(shards, [])) == set(range(10))


@pytest.mark.parametrize("chunk_batches", [1, 2, 100])  # gathered one batch at a time, two, or the whole epoch
def test_in_memory_loader_and_dataloader_yield_identical_batches(chunk_batches, monkeypatch):
    monkeypatch.setattr(InMemoryLoader, "CHUNK_BYTES", chunk_batches * 8 * 3 * 4)  # batch 8 of 3 float32
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(37, 3, generator=g), torch.arange(37))
    sampler = EpochSampler(37, seed=5, shuffle=True)
    sampler.set_epoch(4, start=3)
    cpu = torch.device("cpu")
    fast = make_loader(data, 8, sampler, in_memory=True, num_workers=0, device=cpu, seed=5)
    slow = make_loader(data, 8, sampler, in_memory=False, num_workers=0, device=cpu, seed=5)
    assert isinstance(fast, InMemoryLoader) and isinstance(slow, DataLoader)
    fast_batches, slow_batches = list(fast), list(slow)
    assert len(fast_batches) == len(slow_batches) == len(fast) == 5  # 34 samples left, batch 8
    for (fx, fy), (sx, sy) in zip(fast_batches, slow_batches):
        assert torch.equal(fx, sx) and torch.equal(fy, sy)
    assert torch.equal(torch.cat([y for _, y in fast_batches]), sampler.indices())
    assert epoch_length(sampler, 8) == 5  # full epoch: 37 samples
