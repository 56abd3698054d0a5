"""Use a trained model: rebuild it from its run's config.yaml, load a checkpoint safely, evaluate, predict.

Checkpoints are read only through :func:`ignite_app.io.checkpoint.read_checkpoint` (SHA-256, zip CRCs,
``torch.load(weights_only=True)``) and checked with :func:`~ignite_app.io.checkpoint.check_model_state`
before any weight is loaded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ignite_app.io import checkpoint as ckpt
from ignite_app.config import Config
from ignite_app.data.sources import DataSpec, load_splits, read_csv_table, target_column
from ignite_app.train.devices import resolve_device
from ignite_app.train.build import build_evaluation
from ignite_app.train.engines import make_model_fn
from ignite_app.errors import UserError
from ignite_app.io.atomic import atomic_write_bytes
from ignite_app.models import build_model
from ignite_app.io.paths import output_file, resolve_checkpoint, run_config
from ignite_app.tools.batching import inference_batch_size

SPLITS = ("val", "train")
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


def load_trained(checkpoint: Path, device: str = "auto") -> Trained:
    """Rebuild the model a run trained and load a checkpoint's weights into it (training or best model)."""
    run_dir, path = resolve_checkpoint(Path(checkpoint))
    cfg = run_config(run_dir)
    state = ckpt.read_checkpoint(path)
    weights = state.get("model")
    if not isinstance(weights, Mapping):
        raise ckpt.CheckpointError(f"{path}: holds no model weights; pass a checkpoint_*.pt or best_model_*.pt of an ignite-app run")
    spec = model_spec(state.get("meta"), cfg)
    model = build_model(cfg.model, spec)
    ckpt.check_model_state(model, weights, path)
    model.load_state_dict(weights)
    target = resolve_device(device)
    return Trained(run_dir, path, cfg, spec, model.to(target).eval(), target)


def model_spec(meta: Any, cfg: Config) -> DataSpec:
    """What the model takes and gives: from the checkpoint's meta, else from the run's data."""
    if isinstance(meta, Mapping) and {"task", "input_shape", "num_outputs"} <= set(meta):
        return DataSpec(str(meta["task"]), tuple(int(d) for d in meta["input_shape"]), int(meta["num_outputs"]))
    return load_splits(cfg).spec


def data_config(trained: Trained, dataset: str | None, target: str | None) -> Config:
    """The run's config, with another dataset (and CSV target) if asked, and always the model's task."""
    cfg = trained.cfg
    if dataset is not None:
        cfg = cfg.replace(dataset=dataset, target=target)
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


def evaluate(checkpoint: Path, dataset: str | None = None, target: str | None = None, split: str = "val",
             device: str = "auto", batch_size: int | None = None) -> Evaluation:
    """Run Ignite's evaluator (the run's metrics) over a split of the run's data or of ``dataset``.

    ``batch_size``: samples per batch (``--batch-size``); by default as many as memory allows, up to 4096.
    """
    if split not in SPLITS:
        raise UserError(f"invalid --split {split!r}: choose val or train")
    trained = load_trained(checkpoint, device)
    cfg = data_config(trained, dataset, target)
    splits = load_splits(cfg)
    check_data_fits(splits.spec, trained.spec, cfg.dataset)
    data = splits.val if split == "val" else splits.train
    cfg = cfg.replace(batch_size=inference_batch_size(trained.spec.input_shape, trained.device, batch_size))  # issue 16
    evaluator, loader = build_evaluation(cfg, trained.model, trained.spec, data, trained.device)
    evaluator.run(loader)
    metrics = {name: float(value) for name, value in evaluator.state.metrics.items()}
    return Evaluation(trained.path, cfg.dataset, split, len(data), metrics)


def format_evaluation(result: Evaluation) -> str:
    """The metrics as a small table, under a line that says what was evaluated."""
    width = max(len("metric"), *(len(k) for k in result.metrics))
    lines = [f"{result.path} on {result.dataset}, {result.split} split ({result.samples} samples)",
             f"{'metric'.ljust(width)}  value"]
    lines += [f"{name.ljust(width)}  {value:.4f}" for name, value in result.metrics.items()]
    return "\n".join(lines)


def read_inputs(path: Path, trained: Trained, target: str | None) -> torch.Tensor:
    """Model inputs from a CSV or NPZ file, shaped like the training samples."""
    suffix = path.suffix.lower()
    if suffix not in PREDICT_SUFFIXES:
        raise UserError(f"--input {path}: unsupported file type {suffix or '(none)'!r}; use a .csv or .npz file")
    features = math.prod(trained.spec.input_shape)
    x = _csv_features(path, trained, target, features) if suffix == ".csv" else _npz_features(path, features)
    if len(x) == 0:
        raise UserError(f"--input {path} holds no samples")
    if not np.isfinite(x).all():
        raise UserError(f"--input {path} has NaN or infinite values; clean the data")
    return torch.as_tensor(x, dtype=torch.float32).reshape(len(x), *trained.spec.input_shape)


def _csv_features(path: Path, trained: Trained, target: str | None, features: int) -> np.ndarray:
    header, values = read_csv_table(path, "--input")
    width = values.shape[1]
    if width == features:
        return values
    if width == features + 1:  # the target column is there too: drop it
        if target is None and trained.cfg.dataset.startswith("csv:"):
            target = trained.cfg.target
        return np.delete(values, target_column(target, header, width, path), axis=1)
    raise UserError(
        f"--input {path} has {width} columns, but the model takes {features} features "
        f"({features + 1} with the target column); give the feature columns used in training"
    )


def _npz_features(path: Path, features: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"NPZ file {str(path)!r} does not exist; check the path after --input")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise UserError(f"--input {path} has no array named 'x' (it has: {', '.join(arrays.files) or 'none'}); save the inputs as x")
            x = arrays["x"]
    except UserError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError for object arrays, ...
        raise UserError(f"--input {path} cannot be read as NPZ ({type(exc).__name__}: {exc}); write it with numpy.savez") from None
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


def prediction_arrays(outputs: torch.Tensor, task: str) -> dict[str, np.ndarray]:
    """``labels`` and ``probabilities`` (softmax) for classification, ``outputs`` for regression."""
    if task == "classification":
        return {"labels": outputs.argmax(dim=1).numpy(), "probabilities": torch.softmax(outputs, dim=1).numpy()}
    return {"outputs": outputs.numpy()}


def write_predictions(arrays: dict[str, np.ndarray], path: Path) -> None:
    """NPZ with the arrays as they are, or CSV with one row per sample (label, prob_0, ... or output_0, ...)."""
    if path.suffix.lower() == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
        return
    atomic_write_bytes(path, csv_bytes(arrays))


def csv_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The CSV text of :func:`write_predictions`, formatted by ``numpy.savetxt`` (~2x faster than joining strings)."""
    if "labels" in arrays:
        probs = arrays["probabilities"]
        header = ["label"] + [f"prob_{k}" for k in range(probs.shape[1])]
        table, fmt = np.column_stack([arrays["labels"], probs]), ["%d"] + ["%.6g"] * probs.shape[1]
    else:
        table = arrays["outputs"]
        header = [f"output_{k}" for k in range(table.shape[1])]
        fmt = ["%.7g"] * table.shape[1]
    buffer = io.BytesIO()
    np.savetxt(buffer, table, fmt=fmt, delimiter=",", header=",".join(header), comments="")
    return buffer.getvalue()


def predict(checkpoint: Path, input_path: Path, output_path: Path, target: str | None = None,
            device: str = "auto", batch_size: int | None = None) -> int:
    """Predict for every sample of ``input_path`` and write the results; returns the number of samples."""
    output_file(output_path, "--output", PREDICT_SUFFIXES)
    trained = load_trained(checkpoint, device)
    batch = inference_batch_size(trained.spec.input_shape, trained.device, batch_size)  # issue 16
    x = read_inputs(input_path, trained, target)
    write_predictions(prediction_arrays(run_model(trained, x, batch), trained.spec.task), output_path)
    return len(x)
