"""Datasets: the built-in ones, CSV and NPZ files, and the user's own by import path.

Every source ends as a :class:`Splits`: a train and a validation dataset plus a
:class:`DataSpec` that says what the model must accept and produce.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.data.items import pair_items
from ignite_app.data.streams import Stream
from ignite_app.imports import import_object
from ignite_app.io.safefile import require_utf8

SPLIT_SEED = 0  # the train/validation split is fixed, whatever --seed says
VAL_FRACTION = 0.2
MAX_CLASSES = 1000


@dataclass(frozen=True)
class DataSpec:
    """What the data asks of a model."""

    task: str  # "classification" or "regression"
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    num_outputs: int  # classes, or target values per sample

    @property
    def is_image(self) -> bool:
        """True for (channels, height, width) samples, which the CNN fits."""
        return len(self.input_shape) == 3


@dataclass(frozen=True)
class Splits:
    """A train and a validation dataset with their :class:`DataSpec`."""

    train: Dataset
    val: Dataset
    spec: DataSpec


class ArrayDataset(Dataset):
    """Whole tensors in memory; :meth:`__getitems__` fetches a batch in one indexing call."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise UserError(f"inputs and targets differ in length ({len(x)} vs {len(y)}); give one target per sample")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


def collate_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for :class:`ArrayDataset`: the batch is already stacked."""
    return batch


def load_splits(cfg: Config) -> Splits:
    """Build the train and validation data that ``cfg.dataset`` names."""
    name = cfg.dataset
    if cfg.target is not None and not name.startswith("csv:"):
        raise UserError(f"--target only applies to csv: datasets, not {name!r}; remove it")
    if name == "digits":
        x, y = _digits()
    elif name == "synthetic-regression":
        x, y = _synthetic_regression()
    elif name.startswith("csv:"):
        x, y = _read_csv(Path(name[4:]), cfg.target)
    elif name.startswith("npz:"):
        x, y = _read_npz(Path(name[4:]))
    else:
        return _user_splits(name, cfg.task, (cfg.input_key, cfg.target_key))
    return _array_splits(x, y, cfg.task, name)


def _array_splits(x: np.ndarray, y: np.ndarray, task: str, name: str) -> Splits:
    if len(x) < 2:
        raise UserError(f"dataset {name!r} has {len(x)} sample(s); it needs at least 2 to split train/validation")
    if not np.isfinite(x).all():
        raise UserError(f"dataset {name!r} has NaN or infinite inputs; clean the data")
    task = _infer_task(y, task, name)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt, outputs = _targets(y, task, name)
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, int(round(len(xt) * VAL_FRACTION)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    spec = DataSpec(task=task, input_shape=tuple(xt.shape[1:]), num_outputs=outputs)
    return Splits(ArrayDataset(xt[train_idx], yt[train_idx]), ArrayDataset(xt[val_idx], yt[val_idx]), spec)


def _infer_task(y: np.ndarray, task: str, name: str) -> str:
    integral = y.ndim == 1 and np.issubdtype(y.dtype, np.number) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if task == "classification":
        if not integral or y.min() < 0:
            raise UserError(
                f"dataset {name!r}: --task classification needs one non-negative integer label per sample; "
                "use --task regression for real-valued targets"
            )
        return task
    if task == "regression":
        return task
    few = integral and len(np.unique(y)) <= min(MAX_CLASSES, max(2, len(y) // 5)) and y.min() >= 0
    return "classification" if few else "regression"


def _targets(y: np.ndarray, task: str, name: str) -> tuple[torch.Tensor, int]:
    if task == "classification":
        check_label_range(y, name)
        labels = torch.as_tensor(y.astype(np.int64))
        classes = int(labels.max()) + 1
        if classes < 2:
            raise UserError(f"dataset {name!r} has a single class; classification needs at least 2")
        return labels, classes
    values = torch.as_tensor(y.astype(np.float32))
    if values.ndim == 1:
        values = values.unsqueeze(1)  # (N,) -> (N, 1) to match the model's (N, 1) output
    if not torch.isfinite(values).all():
        raise UserError(f"dataset {name!r} has NaN or infinite targets; clean the data")
    return values, int(values.shape[1])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    table = _digits_table()  # (N, 65): 64 pixel values 0..16, then the label
    x = (table[:, :-1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 64) -> (N, 1, 8, 8)
    return x, table[:, -1].astype(np.int64)


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits CSV, read without importing sklearn.datasets (and scipy): ~1 s less start-up."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits  # a layout we do not know: the slow, sure way

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _synthetic_regression(n: int = 2000, features: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = rng.standard_normal(features).astype(np.float32)
    y = x @ w + 0.5 * np.sin(x[:, 0] * 2.0) + 0.1 * rng.standard_normal(n).astype(np.float32)
    return x, y.astype(np.float32)


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    header, values = read_csv_table(path, "csv:")
    width = values.shape[1]
    if width < 2:
        raise UserError(f"CSV file {str(path)!r} has one column; it needs features and a target column")
    column = target_column(target, header, width, path)
    y = values[:, column]
    x = np.delete(values, column, axis=1).astype(np.float32)
    return x, y


def read_csv_table(path: Path, source: str) -> tuple[list[str] | None, np.ndarray]:
    """A numeric CSV file as (its header or None, a float64 matrix); ``source`` names the option in errors."""
    if not path.is_file():
        raise UserError(f"CSV file {str(path)!r} does not exist; check the path after {source}")
    require_utf8(path, "CSV file")  # issue 15: one line, not a UnicodeDecodeError, for another encoding
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise UserError(f"CSV file {str(path)!r} is empty; it needs rows of numbers")
    header = None if _all_numeric(rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header else rows
    width = len(rows[0])
    values = np.empty((len(body), width), dtype=np.float64)
    for r, row in enumerate(body):
        if len(row) != width:
            raise UserError(f"CSV file {str(path)!r}: row {r + 1 + bool(header)} has {len(row)} columns, expected {width}")
        for c, cell in enumerate(row):
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise UserError(
                    f"CSV file {str(path)!r}: non-numeric value {cell!r} in row {r + 1 + bool(header)}, "
                    f"column {c + 1}; only numbers are supported"
                ) from None
    return header, values


def _all_numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def target_column(target: str | None, header: list[str] | None, width: int, path: Path) -> int:
    """The index of the CSV target column: by name, by index, or the last one."""
    if target is None:
        return width - 1
    if header and target in header:
        return header.index(target)
    if target.lstrip("-").isdigit() and -width <= int(target) < width:
        return int(target) % width
    names = f"columns are {', '.join(header)}" if header else f"use a column index from 0 to {width - 1}"
    raise UserError(f"--target {target!r} is not a column of {str(path)!r}; {names}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"NPZ file {str(path)!r} does not exist; check the path after npz:")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise UserError(
                    f"NPZ file {str(path)!r} has no array named {missing[0]!r} (it has: {', '.join(arrays.files) or 'none'}); "
                    "save inputs as x and targets as y"
                )
            x, y = arrays["x"], arrays["y"]
    except UserError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError for object arrays, ...
        raise UserError(f"NPZ file {str(path)!r} cannot be read ({exc}); write it with numpy.savez") from None
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise UserError(f"NPZ file {str(path)!r}: x and y must be numeric arrays")
    if x.ndim == 0 or y.ndim == 0:
        raise UserError(f"NPZ file {str(path)!r}: x and y must hold one row per sample, not a single number")
    if len(x) != len(y):
        raise UserError(f"NPZ file {str(path)!r}: x has {len(x)} samples but y has {len(y)}; give one target per sample")
    check_npz_arrays(x, y, path)
    return x.astype(np.float32), y


def _user_splits(path: str, task: str, keys: tuple[str | None, str | None] = (None, None)) -> Splits:
    factory = import_object(path, "--dataset")
    datasets = []
    for train in (True, False):
        try:
            datasets.append(factory(train=train))
        except Exception as exc:
            raise UserError(f"--dataset {path}(train={train}) failed: {type(exc).__name__}: {exc}") from None
    if isinstance(datasets[0], IterableDataset):  # issue 13
        return _stream_splits(datasets, path, task, keys)
    datasets = [pair_items(d, *keys, path) for d in datasets]  # issue 13: dict items by --input-key/--target-key
    train_ds, val_ds = (_as_array_dataset(d) for d in datasets)
    for label, ds in (("train", train_ds), ("validation", val_ds)):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
            raise UserError(f"--dataset {path} returned an empty or unsized {label} dataset; return a map-style Dataset")
    x0, y0 = _first_sample(train_ds, path)
    spec = _user_spec(train_ds, torch.as_tensor(x0), torch.as_tensor(y0), task, path, val_ds)
    return Splits(train_ds, val_ds, spec)


def _stream_splits(datasets: list[Any], path: str, task: str, keys: tuple[str | None, str | None]) -> Splits:
    """issue 13: IterableDatasets as :class:`~ignite_app.data.streams.Stream` splits; classes from ``num_classes``."""
    train, val = (Stream(d, *keys, path) for d in datasets)
    x0, y0 = (torch.as_tensor(v) for v in train.pair(train.first))
    integer_target = y0.ndim == 0 and not torch.is_floating_point(y0)
    if task == "classification" or (task == "auto" and integer_target):
        classes = getattr(datasets[0], "num_classes", None)
        if not integer_target or not isinstance(classes, int) or classes < 2:
            raise UserError(f"--dataset {path}: a classification IterableDataset needs integer labels and a "
                            "num_classes attribute (>= 2), since a stream cannot be counted")
        return Splits(train, val, DataSpec("classification", tuple(x0.shape), classes))
    return Splits(train, val, DataSpec("regression", tuple(x0.shape), 1 if y0.ndim == 0 else int(y0.numel())))


def _as_array_dataset(ds: Any) -> Any:
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ArrayDataset(ds.tensors[0], ds.tensors[1])
    return ds


def _first_sample(ds: Any, path: str) -> tuple[Any, Any]:
    try:
        item = ds[0]
        x, y = item
    except Exception:
        raise UserError(f"--dataset {path}: items must be (input, target) pairs") from None
    return x, y


def _user_spec(ds: Any, x0: torch.Tensor, y0: torch.Tensor, task: str, path: str, val_ds: Any = None) -> DataSpec:
    integer_target = y0.ndim == 0 and not torch.is_floating_point(y0)
    if task == "auto":
        task = "classification" if integer_target else "regression"
    if task == "classification":
        if not integer_target:
            raise UserError(f"--dataset {path}: classification needs integer class labels as targets")
        classes = getattr(ds, "num_classes", None) or _count_classes(ds)
        check_user_labels(ds, val_ds, int(classes), path)
        return DataSpec("classification", tuple(x0.shape), int(classes))
    outputs = 1 if y0.ndim == 0 else int(y0.numel())
    return DataSpec("regression", tuple(x0.shape), outputs)


def _count_classes(ds: Any) -> int:
    if isinstance(ds, ArrayDataset):
        return int(ds.y.max()) + 1
    return max(int(ds[i][1]) for i in range(len(ds))) + 1


# issue 15: labels and arrays checked when the data is loaded, before the run directory is written

MAX_LABEL = 100_000  # class labels run 0..MAX_LABEL-1: the model's output layer has one unit per class


def check_label_range(y: np.ndarray, name: str) -> None:
    """Classification labels must be integers from 0 to MAX_LABEL - 1 (a label of 3e9 would allocate terabytes)."""
    if len(y) and (y.min() < 0 or y.max() >= MAX_LABEL):
        bad = y.min() if y.min() < 0 else y.max()
        raise UserError(f"dataset {name!r} has the class label {bad:.6g}; labels must run from 0 to {MAX_LABEL - 1}: "
                        "renumber the classes, or use --task regression")


def check_user_labels(train: Any, val: Any, classes: int, path: str) -> None:
    """Every label of a user dataset (both splits) lies in 0..classes-1, and classes is at most MAX_LABEL."""
    if classes > MAX_LABEL:
        raise UserError(f"--dataset {path}: {classes} classes; at most {MAX_LABEL} are supported")
    for split, ds in (("train", train), ("validation", val)):
        if ds is None:
            continue
        labels = ds.y if isinstance(ds, ArrayDataset) else torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise UserError(f"--dataset {path}: the {split} data has the label {bad}, outside 0..{classes - 1}; "
                            "labels must number the classes from 0")


def check_npz_arrays(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Real-valued inputs and targets, and at least one feature per sample."""
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        raise UserError(f"NPZ file {str(path)!r}: x and y must be real numbers, not complex; save the real part")
    if 0 in x.shape[1:]:
        raise UserError(f"NPZ file {str(path)!r}: x has shape {tuple(x.shape)}, with no features per sample; "
                        "save x with one row of features per sample")
