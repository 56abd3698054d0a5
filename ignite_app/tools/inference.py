"""Use a trained model: rebuild it from its run's config.yaml, load a checkpoint safely, evaluate, predict.

Checkpoints are read only through :func:`ignite_app.io.checkpoint.read_checkpoint` (SHA-256, zip CRCs,
``torch.load(weights_only=True)``) and checked with :func:`~ignite_app.io.checkpoint.check_model_state`
before any weight is loaded.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ignite_app.io import checkpoint as ckpt
from ignite_app.config import Config
from ignite_app.data.images import IMAGE_SUFFIXES, read_images
from ignite_app.data.preprocess import Preprocessor, feature_rows, rows_from_arrays
from ignite_app.data.select import load_splits  # issue 13: image folders too
from ignite_app.data.sources import ArrayDataset, DataSpec, Splits, read_npz
from ignite_app.data.tabular import read_table
from ignite_app.train.devices import resolve_device
from ignite_app.train.build import build_evaluation
from ignite_app.train.ema import inference_weights
from ignite_app.train.engines import make_model_fn
from ignite_app.errors import UserError
from ignite_app.io.atomic import atomic_write_bytes
from ignite_app.models import build_model
from ignite_app.models.normalize import wrap_for_weights
from ignite_app.io.paths import output_file, resolve_checkpoint, run_config
from ignite_app.tools.batching import inference_batch_size

SPLITS = ("train", "val", "test", "all")
PREDICT_SUFFIXES = (".csv", ".npz")
PREDICT_BATCH = 1024


@dataclass
class Trained:
    """A model rebuilt from its run and loaded from a checkpoint, in eval mode on ``device``."""

    run_dir: Path
    path: Path
    cfg: Config
    spec: DataSpec  # what the model takes and gives
    model: nn.Module
    device: torch.device
    preprocess: Preprocessor | None = None  # None in checkpoints from before preprocessing was stored


def load_trained(checkpoint: Path, device: str = "auto") -> Trained:
    """Rebuild the model a run trained and load a checkpoint's weights into it (training or best model)."""
    run_dir, path = resolve_checkpoint(Path(checkpoint))
    cfg = run_config(run_dir)
    state = ckpt.read_checkpoint(path)
    weights = inference_weights(state)  # issue 12: the EMA weights of a training checkpoint that has them
    if not isinstance(weights, Mapping):
        raise ckpt.CheckpointError(f"{path}: holds no model weights; pass a checkpoint_*.pt or best_model_*.pt of an ignite-app run")
    spec = model_spec(state.get("meta"), cfg)
    model = wrap_for_weights(build_model(cfg.model, spec, dict(cfg.model_args)), weights)  # issue 13: pixel statistics of image runs
    ckpt.check_model_state(model, weights, path)
    model.load_state_dict(weights)
    target = resolve_device(device)
    return Trained(run_dir, path, cfg, spec, model.to(target).eval(), target, stored_preprocess(state, path))


def stored_preprocess(state: Mapping[str, Any], path: Path) -> Preprocessor | None:
    """The checkpoint's preprocessing, if it holds one."""
    if "preprocess" not in state:
        return None
    try:
        return Preprocessor.from_state(state["preprocess"])
    except ValueError as exc:
        raise ckpt.CheckpointError(f"{path}: {exc}; use a checkpoint written by this version of ignite-app") from None


def model_spec(meta: Any, cfg: Config) -> DataSpec:
    """What the model takes and gives: from the checkpoint's meta, else from the run's data."""
    if isinstance(meta, Mapping) and {"task", "input_shape", "num_outputs"} <= set(meta):
        return DataSpec(str(meta["task"]), tuple(int(d) for d in meta["input_shape"]), int(meta["num_outputs"]))
    return load_splits(cfg).spec


def data_config(trained: Trained, dataset: str | None, target: str | None) -> Config:
    """The run's config, with another dataset (and CSV target) if asked, and always the model's task."""
    cfg = trained.cfg
    if dataset is not None:  # its own rows only: not the run's validation or test files
        cfg = cfg.replace(dataset=dataset, target=target, val_dataset=None, test_dataset=None)
    elif target is not None:
        cfg = cfg.replace(target=target)
    return cfg.replace(task=trained.spec.task)


def check_data_fits(data: DataSpec, model: DataSpec, name: str) -> None:
    """Refuse data whose samples or targets do not fit the model, before running it."""
    if data.input_shape != model.input_shape:
        raise UserError(
            f"dataset {name!r} has samples of shape {data.input_shape}, but the model takes {model.input_shape}; "
            "use data with the features the model was trained on"
        )
    if model.task == "classification" and data.num_outputs > model.num_outputs:
        raise UserError(f"dataset {name!r} has labels up to {data.num_outputs - 1}, but the model knows {model.num_outputs} classes")
    if model.task == "regression" and data.num_outputs != model.num_outputs:
        raise UserError(f"dataset {name!r} has {data.num_outputs} target(s) per sample, but the model predicts {model.num_outputs}")


@dataclass
class Evaluation:
    """The metrics of one checkpoint on one split of a dataset."""

    path: Path
    dataset: str
    split: str
    samples: int
    metrics: dict[str, float]
    tables: dict[str, list[list[int]]] = field(default_factory=dict)  # issue 12: the confusion matrix


def evaluate(checkpoint: Path, dataset: str | None = None, target: str | None = None, split: str = "val",
             device: str = "auto", batch_size: int | None = None) -> Evaluation:
    """Run Ignite's evaluator (the run's metrics) over a split of the run's data or of ``dataset``.

    ``batch_size``: samples per batch (``--batch-size``); by default as many as memory allows, up to 4096.
    """
    if split not in SPLITS:
        raise UserError(f"invalid --split {split!r}: choose {', '.join(SPLITS)}")
    trained = load_trained(checkpoint, device)
    cfg = data_config(trained, dataset, target)
    if split == "test" and not cfg.test_dataset:
        raise UserError("--split test: this run has no test set (train with --test-dataset FILE), "
                        "or evaluate a file with --dataset FILE")
    splits = load_splits(cfg, trained.preprocess)
    check_data_fits(splits.spec, trained.spec, cfg.dataset)
    data = split_data(splits, split)
    cfg = cfg.replace(batch_size=inference_batch_size(trained.spec.input_shape, trained.device, batch_size))  # issue 16
    evaluator, loader = build_evaluation(cfg, trained.model, trained.spec, data, trained.device, trained.preprocess)
    seen = count_samples(evaluator)  # issue 13: a stream has no len()
    evaluator.run(loader)
    metrics = {name: float(value) for name, value in evaluator.state.metrics.items()}
    tables = {name: value.to(torch.int64).tolist() for name, value in getattr(evaluator.state, "tables", {}).items()}
    return Evaluation(trained.path, cfg.test_dataset if split == "test" else cfg.dataset, split, seen[0], metrics, tables)


def split_data(splits: Splits, split: str) -> Any:
    """One split's dataset; ``all`` is every row of the dataset (train and validation)."""
    if split == "all":
        if isinstance(splits.train, ArrayDataset) and isinstance(splits.val, ArrayDataset):
            return ArrayDataset(torch.cat([splits.train.x, splits.val.x]), torch.cat([splits.train.y, splits.val.y]))
        return torch.utils.data.ConcatDataset([splits.train, splits.val])
    return {"train": splits.train, "val": splits.val, "test": splits.test}[split]


def count_samples(engine: Any) -> list[int]:
    """A one-item list that counts the samples ``engine`` has run through (updated every iteration)."""
    from ignite.engine import Events

    seen = [0]

    def add(e: Any) -> None:
        seen[0] += len(e.state.batch[1])

    engine.add_event_handler(Events.ITERATION_COMPLETED, add)
    return seen


def format_evaluation(result: Evaluation) -> str:
    """The metrics as a small table, under a line that says what was evaluated."""
    width = max(len("metric"), *(len(k) for k in result.metrics))
    what = "every row" if result.split == "all" else f"{result.split} split"
    lines = [f"{result.path} on {result.dataset}, {what} ({result.samples} samples)",
             f"{'metric'.ljust(width)}  value"]
    lines += [f"{name.ljust(width)}  {value:.4f}" for name, value in result.metrics.items()]
    for name, rows in result.tables.items():
        from ignite_app.train.metrics import format_table

        lines += ["", f"{name} (rows: true class, columns: predicted)", format_table(torch.tensor(rows))]
    return "\n".join(lines)


def read_inputs(path: Path, trained: Trained, target: str | None) -> torch.Tensor:
    """Model inputs from a CSV or NPZ file of raw rows, preprocessed as in training (or images, for an image model)."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".csv.gz") else path.suffix.lower()
    if path.is_dir() or suffix in IMAGE_SUFFIXES:  # issue 13: an image file or a folder of images
        return torch.from_numpy(read_images(path, trained.spec.input_shape))
    if suffix not in PREDICT_SUFFIXES + (".csv.gz",):
        raise UserError(f"--input {path}: unsupported file type {suffix or '(none)'!r}; use a .csv, .csv.gz or .npz file")
    pre, where = trained.preprocess, f"--input {path}"
    if pre is not None and pre.kind == "table" and suffix != ".npz":
        table = read_table(path, "--input", trained.cfg.encoding)
        if target is None and trained.cfg.dataset.startswith("csv:"):
            target = trained.cfg.target
        return pre.inputs(feature_rows(table, pre, target, where), where)
    if pre is not None and pre.text_names:
        raise UserError(f"--input {path}: the model was trained on text columns ({', '.join(pre.text_names)}); "
                        "give a CSV file with the training columns")
    features = math.prod(trained.spec.input_shape) if pre is None else math.prod(pre.sample_shape)
    x = _npz_features(path, features) if suffix == ".npz" else _csv_features(path, trained, target, features)
    if len(x) == 0:
        raise UserError(f"--input {path} holds no samples")
    if pre is not None:
        return pre.inputs(rows_from_arrays(x.reshape(len(x), *pre.sample_shape), None), where)
    if not np.isfinite(x).all():
        raise UserError(f"--input {path} has NaN or infinite values; clean the data")
    return torch.as_tensor(x, dtype=torch.float32).reshape(len(x), *trained.spec.input_shape)


def _csv_features(path: Path, trained: Trained, target: str | None, features: int) -> np.ndarray:
    table = read_table(path, "--input", trained.cfg.encoding)
    if any(c.is_text for c in table.columns):
        name = next(c.name for c in table.columns if c.is_text)
        raise UserError(f"--input {path}: column {name!r} holds words, but the model takes numbers only")
    values = np.column_stack([c.numbers for c in table.columns])
    width = values.shape[1]
    if width == features:
        return values
    if width == features + 1:  # the target column is there too: drop it
        if target is None and trained.cfg.dataset.startswith("csv:"):
            target = trained.cfg.target
        column = table.names.index(target) if target in table.names and table.header else None
        if column is None:
            column = width - 1 if target is None or not target.lstrip("-").isdigit() else int(target) % width
        return np.delete(values, column, axis=1)
    raise UserError(
        f"--input {path} has {width} columns, but the model takes {features} features "
        f"({features + 1} with the target column); give the feature columns used in training"
    )


def _npz_features(path: Path, features: int) -> np.ndarray:
    x = read_npz(path, ("x",), "--input", "save the inputs as x")["x"]
    if not np.issubdtype(x.dtype, np.number) or x.ndim == 0:
        raise UserError(f"--input {path}: x must be a numeric array with one row per sample")
    if math.prod(x.shape[1:]) != features:
        raise UserError(f"--input {path}: x has samples of shape {x.shape[1:]}, but the model takes {features} features")
    return x.reshape(len(x), features)


def run_model(trained: Trained, x: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """The model's outputs for ``x``, in batches, without gradients, on the CPU."""
    forward = make_model_fn(trained.device, trained.cfg.amp)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(forward(trained.model, x[start : start + batch_size].to(trained.device)).float().cpu())
    return torch.cat(outputs)


def prediction_arrays(outputs: torch.Tensor, task: str, pre: Preprocessor | None = None) -> dict[str, np.ndarray]:
    """``labels`` (the original class labels) and ``probabilities`` (softmax) for classification, else ``outputs``
    (in the targets' own units)."""
    if task == "classification":
        codes = outputs.argmax(dim=1).numpy()
        return {"labels": original_labels(codes, pre), "probabilities": torch.softmax(outputs, dim=1).numpy()}
    return {"outputs": (pre.outputs(outputs) if pre is not None else outputs).numpy()}


def original_labels(codes: np.ndarray, pre: Preprocessor | None) -> np.ndarray:
    """Class codes as the labels of the training data: whole numbers stay numbers, words stay words."""
    if pre is None or not pre.classes:
        return codes
    names = np.array(pre.classes)
    if all(name.lstrip("-").isdigit() for name in pre.classes):
        names = names.astype(np.int64)
    return names[codes]


def write_predictions(arrays: dict[str, np.ndarray], path: Path, pre: Preprocessor | None = None) -> None:
    """NPZ with the arrays as they are, or CSV with one row per sample (label, prob_<class>, ... or output_0, ...)."""
    if path.suffix.lower() == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
        return
    atomic_write_bytes(path, csv_bytes(arrays, pre))


def csv_bytes(arrays: dict[str, np.ndarray], pre: Preprocessor | None = None) -> bytes:
    """The CSV text of :func:`write_predictions`: a header line, then one row per sample.

    The rows are written by pyarrow's CSV writer (C++): 0.09 s per 100k rows of 10 probabilities
    against 0.32 s for ``numpy.savetxt``, a Python loop over rows (issue 16; 2-core VM). Floats are
    written in their shortest exact form (float32: at most 9 digits), so reading the file gives back
    the model's values bit for bit; text labels are quoted, as CSV allows.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    if "labels" in arrays:
        probs = arrays["probabilities"]
        names = pre.classes if pre is not None and pre.classes else [str(k) for k in range(probs.shape[1])]
        header = ["label"] + [f"prob_{name}" for name in names]
        columns = [_arrow_labels(np.asarray(arrays["labels"]))] + [_arrow_numbers(c) for c in probs.T]
    else:
        table = arrays["outputs"]
        named = pre is not None and pre.kind == "table" and len(pre.target_names) == table.shape[1]
        header = list(pre.target_names) if named else [f"output_{k}" for k in range(table.shape[1])]
        columns = [_arrow_numbers(c) for c in table.T]
    buffer = io.BytesIO()
    buffer.write(_csv_line(header).encode("utf-8"))
    rows = pa.Table.from_arrays(columns, names=[str(k) for k in range(len(columns))])  # the header is the line above
    pa_csv.write_csv(rows, buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue()


# pyarrow.array() imports pandas to check for its types (0.25-0.3 s of a 2 s predict): arrays are built from buffers.


def _arrow_numbers(values: np.ndarray) -> Any:
    """A numeric column (int64, float32 or float64) as an Arrow array over the same memory."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    kind = {np.dtype(np.int64): pa.int64(), np.dtype(np.float32): pa.float32(), np.dtype(np.float64): pa.float64()}
    if values.dtype not in kind:
        values, arrow_type = values.astype(np.float64), pa.float64()
    else:
        arrow_type = kind[values.dtype]
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _arrow_labels(labels: np.ndarray) -> Any:
    """Class labels: whole numbers as numbers, words as a dictionary column (each distinct word encoded once)."""
    import pyarrow as pa

    if np.issubdtype(labels.dtype, np.integer):
        return _arrow_numbers(labels.astype(np.int64))
    words, codes = np.unique(labels, return_inverse=True)
    data = [str(word).encode("utf-8") for word in words]
    offsets = np.cumsum([0] + [len(d) for d in data], dtype=np.int32)
    dictionary = pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    return pa.DictionaryArray.from_arrays(_arrow_numbers(codes.reshape(-1).astype(np.int64)), dictionary)


def predict(checkpoint: Path, input_path: Path, output_path: Path, target: str | None = None,
            device: str = "auto", batch_size: int | None = None) -> int:
    """Predict for every sample of ``input_path`` and write the results; returns the number of samples."""
    output_file(output_path, "--output", PREDICT_SUFFIXES)
    trained = load_trained(checkpoint, device)
    batch = inference_batch_size(trained.spec.input_shape, trained.device, batch_size)  # issue 16
    x = read_inputs(input_path, trained, target)
    arrays = prediction_arrays(run_model(trained, x, batch), trained.spec.task, trained.preprocess)
    write_predictions(arrays, output_path, trained.preprocess)
    return len(x)


def _csv_line(cells: list[str]) -> str:
    """One CSV line, quoting cells (class names) that hold commas or quotes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()
