"""Datasets: the built-in ones, CSV and NPZ files, and the user's own by import path.

Every source ends as a :class:`Splits`: a train and a validation dataset plus a
:class:`DataSpec` that says what the model must accept and produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from ignite_app.config import Config
from ignite_app.data.preprocess import (
    Preprocessor, RawRows, class_names, feature_rows, fit, handle_missing, infer_task, label_codes, label_name,
    labels_only, rows_from_arrays, rows_from_table,
)
from ignite_app.data.splits import SPLIT_SEED, stratified_split
from ignite_app.data.items import pair_items
from ignite_app.data.streams import Stream
from ignite_app.data.tabular import read_table
from ignite_app.errors import UserError
from ignite_app.imports import import_object


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
    preprocess: Preprocessor | None = None  # learned on the training rows; None for the user's own datasets
    test: Dataset | None = None  # --test-dataset
    notes: tuple[str, ...] = ()  # what reading the data decided, worth a line each


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


def load_splits(cfg: Config, preprocess: Preprocessor | None = None) -> Splits:
    """Build the train and validation data that ``cfg.dataset`` names.

    Files and built-in data are preprocessed as :mod:`ignite_app.data.preprocess` learns on their
    training rows, or with ``preprocess`` (a trained model's) when given.
    """
    name = cfg.dataset
    if cfg.target is not None and not name.startswith("csv:"):
        raise UserError(f"--target only applies to csv: datasets, not {name!r}; remove it")
    if name in ("digits", "synthetic-regression") or name.startswith(("csv:", "npz:")):
        return _array_splits(cfg, preprocess)
    return _user_splits(name, cfg.task, (cfg.input_key, cfg.target_key))


def _array_splits(cfg: Config, stored: Preprocessor | None) -> Splits:
    """Rows read, cleaned, split (stratified for classes), preprocessed as learned on the training rows."""
    name, notes = cfg.dataset, []
    rows, source = _read_rows(name, cfg, notes, stored)
    rows = handle_missing(rows, cfg.na if stored is None else stored.na, name, notes, source.get("line", lambda r: r + 1))

    def fit_training(train: RawRows, task: str, classes: list[str]) -> Preprocessor:
        return fit(train, task, classes, kind=source["kind"], standardize=cfg.standardize, na=cfg.na,
                   columns=source.get("columns"), header=source.get("header", True), scale=source.get("scale"))

    return split_rows(cfg, stored, rows, notes, fit_training, lambda pre, part: _preprocessed(pre, part, name),
                      stratify=source.get("stratify", True))


def split_rows(cfg: Config, stored: Preprocessor | None, rows: RawRows, notes: list[str],
               fit_training: Callable[[RawRows, str, list[str]], Preprocessor],
               dataset: Callable[[Preprocessor, RawRows], Any], stratify: bool = True,
               check: Callable[[RawRows], None] | None = None) -> Splits:
    """Cleaned rows split train/validation (stratified for classes), the preprocessing fitted on the training
    rows (or ``stored``), and each part made a dataset by ``dataset``; ``check`` runs once there are two rows.

    In memory the rows are the data; ``data/npz_stream.py`` passes row numbers and keeps x on disk.
    """
    name = cfg.dataset
    if len(rows) < 2:
        raise UserError(f"dataset {name!r} has {len(rows)} sample(s); it needs at least 2 to split train/validation")
    if check is not None:
        check(rows)
    task = stored.task if stored else infer_task(rows.target, cfg.task, name)
    classes = stored.classes if stored else (class_names(rows.target, name) if task == "classification" else [])
    codes = label_codes(rows.target, classes, name) if task == "classification" else None
    if cfg.val_dataset:
        train_idx, val_idx = np.arange(len(rows)), None
    else:
        train_idx, val_idx = stratified_split(codes if stratify else None, len(rows), cfg.val_fraction)
    pre = stored or fit_training(rows.take(train_idx), task, classes)
    train = dataset(pre, rows.take(train_idx))
    val = dataset(pre, rows.take(val_idx)) if val_idx is not None else other_file(cfg.val_dataset, cfg, pre, notes)
    test = other_file(cfg.test_dataset, cfg, pre, notes) if cfg.test_dataset else None
    outputs = len(classes) if task == "classification" else int(train.y.shape[1])
    spec = DataSpec(task=task, input_shape=pre.input_shape, num_outputs=outputs)
    return Splits(train, val, spec, preprocess=pre, test=test, notes=tuple(notes))


def _read_rows(name: str, cfg: Config, notes: list[str], pre: Preprocessor | None) -> tuple[RawRows, dict[str, Any]]:
    """The rows of a built-in dataset or a file, with what ``fit`` needs to know of their source."""
    if name == "digits":
        x, y = _digits()
        # pixels 0..16: one stored step, x / 16; the classes are balanced and the split stays the one the README reports
        return rows_from_arrays(x, y), {"kind": "array", "scale": 16.0, "stratify": False}
    if name == "synthetic-regression":
        return rows_from_arrays(*_synthetic_regression()), {"kind": "array"}
    if name.startswith("npz:"):
        return _aligned(rows_from_arrays(*_read_npz(Path(name[4:]))), pre, name), {"kind": "array"}
    table = read_table(Path(name[4:]), "csv:", cfg.encoding)
    notes.extend(table.notes)
    if pre is not None and pre.kind == "table":
        target = cfg.target or (",".join(pre.target_names) if table.header and pre.header else None)
        rows, targets = feature_rows(table, pre, target, f"dataset {name!r}"), rows_from_table(table, target)
        rows.target, rows.target_names = targets.target, targets.target_names
    else:
        rows = _aligned(rows_from_table(table, cfg.target), pre, name)
    return rows, {"kind": "table", "columns": table.names, "header": table.header, "line": table.line}


def _aligned(rows: RawRows, pre: Preprocessor | None, name: str) -> RawRows:
    """Array rows shaped as a trained model's samples (a flat CSV row for image samples, and so on)."""
    if pre is None:
        return rows
    if rows.text.size and pre.kind != "table":
        raise UserError(f"dataset {name!r} has text columns ({', '.join(rows.text_names)}), but the model takes numbers only")
    if pre.text_names and not rows.text.size:
        raise UserError(f"dataset {name!r} has no text columns, but the model was trained on {', '.join(pre.text_names)}; "
                        "give a CSV file with the training columns")
    size = int(np.prod(pre.sample_shape))
    if int(np.prod(rows.numeric.shape[1:])) != size:
        raise UserError(f"dataset {name!r} has samples of shape {tuple(rows.numeric.shape[1:])}, but the model takes "
                        f"{tuple(pre.sample_shape)}; use data with the features the model was trained on")
    rows.numeric = rows.numeric.reshape(len(rows), *pre.sample_shape)
    return rows


def _preprocessed(pre: Preprocessor, rows: RawRows, name: str) -> ArrayDataset:
    """An in-memory dataset of the preprocessed rows (computed once here, never per batch)."""
    return ArrayDataset(pre.inputs(rows, f"dataset {name!r}"), pre.targets(rows, name))


def other_file(name: str, cfg: Config, pre: Preprocessor, notes: list[str]) -> ArrayDataset:
    """--val-dataset or --test-dataset: every row, preprocessed as the training rows were."""
    rows, source = _read_rows(name, cfg.replace(target=cfg.target if name.startswith("csv:") else None), notes, pre)
    rows = handle_missing(rows, pre.na, name, notes, source.get("line", lambda r: r + 1))
    if len(rows) == 0:
        raise UserError(f"dataset {name!r} has no rows left to use; give it some")
    data = _preprocessed(pre, rows, name)
    if tuple(data.x.shape[1:]) != pre.input_shape:
        raise UserError(f"dataset {name!r} has samples of shape {tuple(data.x.shape[1:])}, but the training data has "
                        f"{pre.input_shape}; give it the training columns")
    return data


def _digits() -> tuple[np.ndarray, np.ndarray]:
    table = _digits_table()  # (N, 65): 64 pixel values 0..16, then the label
    x = table[:, :-1].reshape(-1, 1, 8, 8)  # (N, 64) -> (N, 1, 8, 8); the scaling is a stored preprocessing step
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


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path, ("x", "y"), "npz:", "save inputs as x and targets as y")
    check_npz_pair(arrays["x"], arrays["y"], path)
    return arrays["x"], arrays["y"]


def read_npz(path: Path, names: tuple[str, ...], where: str, fix: str) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a whole NPZ file, never unpickled; ``where`` is the option that named the file
    (``npz:``, ``--input``) and ``fix`` what to do when an array is missing, for the one-line errors."""
    if not path.is_file():
        raise UserError(f"NPZ file {str(path)!r} does not exist; check the path after {where}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in names if k not in arrays.files]
            if missing:
                raise UserError(f"NPZ file {str(path)!r} has no array named {missing[0]!r} "
                                f"(it has: {', '.join(arrays.files) or 'none'}); {fix}")
            return {name: arrays[name] for name in names}
    except UserError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError for object arrays, ...
        raise UserError(f"NPZ file {str(path)!r} cannot be read ({exc}); write it with numpy.savez") from None


def check_npz_pair(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Numeric x and y with one row per sample each, as many of one as of the other."""
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise UserError(f"NPZ file {str(path)!r}: x and y must be numeric arrays")
    if x.ndim == 0 or y.ndim == 0:
        raise UserError(f"NPZ file {str(path)!r}: x and y must hold one row per sample, not a single number")
    if len(x) != len(y):
        raise UserError(f"NPZ file {str(path)!r}: x has {len(x)} samples but y has {len(y)}; give one target per sample")
    check_npz_arrays(x, y, path)


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
    mapped = _mapped_labels(train_ds, val_ds, torch.as_tensor(x0), y0, task, path)
    if mapped is not None:
        return mapped
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


def _mapped_labels(train_ds: Any, val_ds: Any, x0: torch.Tensor, y0: Any, task: str, path: str) -> Splits | None:
    """Class labels other than the integers 0..K-1 (words, 0./1./2., -1/+1, 1..K) mapped to 0..K-1, their names kept.

    None when the labels need nothing (0..K-1 integers, a ``num_classes`` attribute, regression targets).
    """
    words = isinstance(y0, str)
    if not words and (not isinstance(y0, (int, float, np.number, torch.Tensor)) or np.ndim(y0) != 0):
        return None
    integer = not words and not torch.is_floating_point(torch.as_tensor(y0))
    if (task == "regression" and not words) or (integer and getattr(train_ds, "num_classes", None)):
        return None
    values = np.concatenate([_all_labels(train_ds), _all_labels(val_ds)])
    name = f"--dataset {path}"
    if integer and task == "auto":
        task = "classification"  # whole-number labels from a factory always meant classes
    if infer_task(values, task, name) != "classification":
        return None
    classes = class_names(values, name)
    if integer and classes == [str(k) for k in range(len(classes))]:
        return None  # already 0..K-1
    index = {c: k for k, c in enumerate(classes)}
    train, val = (_relabelled(ds, index, name) for ds in (train_ds, val_ds))
    spec = DataSpec("classification", tuple(x0.shape), len(classes))
    return Splits(train, val, spec, preprocess=labels_only(list(x0.shape), classes))


def _all_labels(ds: Any) -> np.ndarray:
    """Every label of a dataset (words as an object array)."""
    if isinstance(ds, ArrayDataset):
        return ds.y.numpy()
    labels = [ds[i][1] for i in range(len(ds))]
    if any(isinstance(v, str) for v in labels):
        return np.array([str(v) for v in labels], dtype=object)
    return np.array([float(v) for v in labels])


def _relabelled(ds: Any, index: dict[str, int], name: str) -> Any:
    if isinstance(ds, ArrayDataset):
        return ArrayDataset(ds.x, torch.as_tensor(label_codes(ds.y.numpy(), list(index), name)))
    return RelabelledDataset(ds, index)


class RelabelledDataset(Dataset):
    """The user's dataset with each label replaced by its class index."""

    def __init__(self, dataset: Any, index: dict[str, int]) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        x, y = self.dataset[i]
        return x, torch.tensor(self.index[label_name(y if isinstance(y, str) else float(y))])


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
