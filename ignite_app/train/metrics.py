"""Validation metrics (``--metrics``) from Ignite's metrics, and the monitor (``--monitor``, ``--mode``).

Every metric is an Ignite ``Metric``: under torchrun each one reduces its sums (or gathers its
predictions, for AUROC) over the processes, so the numbers equal a one-process evaluation. The
:class:`Monitor` turns one of them into the score that early stopping, the best checkpoint and
ReduceLROnPlateau all follow.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import (
    Accuracy, ConfusionMatrix, Fbeta, Loss, MeanAbsoluteError, MeanSquaredError, Metric, Precision, Recall, ROC_AUC,
    RootMeanSquaredError, TopKCategoricalAccuracy,
)
from ignite.metrics.regression import R2Score
from torch import nn

from ignite_app.config import CLASSIFICATION_METRICS, REGRESSION_METRICS, metric_direction, top_k
from ignite_app.errors import UserError

DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("mae",)}
TABLE_METRICS = ("confusion_matrix",)  # not scalars: kept in ``engine.state.tables``, logged as text


def loss_for(task: str, class_weights: torch.Tensor | None = None) -> nn.Module:
    """CrossEntropyLoss (optionally class-weighted) for classification, MSELoss for regression."""
    return nn.CrossEntropyLoss(weight=class_weights) if task == "classification" else nn.MSELoss()


def metric_names(task: str, names: Sequence[str]) -> tuple[str, ...]:
    """The metrics a run computes: ``loss`` first, then ``names`` (or the task's default ones)."""
    chosen = tuple(names) or DEFAULT_METRICS[task]
    allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    for name in chosen:
        ok = name in allowed or (task == "classification" and top_k(name) is not None)
        if not ok:
            other = "regression" if task == "classification" else "classification"
            choices = ", ".join(allowed).replace("topK", "topK (e.g. top5)")
            raise UserError(f"--metrics {name} is a {other} metric but this data is {task}; choose from {choices}")
    return ("loss",) + chosen


def metrics_for(task: str, device: torch.device, names: Sequence[str] = (), num_classes: int | None = None,
                loss: nn.Module | None = None, to_units: Callable[[torch.Tensor], torch.Tensor] | None = None,
                ) -> dict[str, Metric]:
    """Ignite metrics for validation: the loss, then ``names`` (default: accuracy, or MAE for regression).

    ``to_units`` maps standardised regression outputs and targets back to the targets' own units: every
    regression metric but the loss is reported in those units.
    """
    metrics: dict[str, Metric] = {}
    for name in metric_names(task, names):
        metrics[name] = make_metric(name, task, device, num_classes, loss, to_units if name != "loss" else None)
    return metrics


def make_metric(name: str, task: str, device: torch.device, num_classes: int | None, loss: nn.Module | None,
                to_units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Metric:
    """One Ignite metric by its --metrics name."""
    if name == "loss":
        return Loss(loss if loss is not None else loss_for(task), device=device)
    if top_k(name) is not None:
        k = top_k(name)
        if num_classes is not None and k > num_classes:
            raise UserError(f"--metrics {name}: top-{k} accuracy needs more than {num_classes} classes; use a smaller k")
        return TopKCategoricalAccuracy(k=k, device=device)
    if name in ("auroc", "confusion_matrix") and num_classes is None:
        raise UserError(f"--metrics {name} needs the number of classes")
    units = (lambda out: (to_units(out[0]), to_units(out[1]))) if to_units is not None else (lambda out: out)
    if name == "auroc" and num_classes != 2:
        raise UserError(f"--metrics auroc is for two classes, this data has {num_classes}; use f1 or top5 instead")
    makers = {
        "accuracy": lambda: Accuracy(device=device),
        "precision": lambda: Precision(average="macro", device=device),
        "recall": lambda: Recall(average="macro", device=device),
        "f1": lambda: Fbeta(beta=1.0, average=True, device=device),  # the mean of per-class F1: macro F1
        "auroc": lambda: AUROC(output_transform=positive_probability, device=device),
        "confusion_matrix": lambda: ConfusionMatrix(num_classes=int(num_classes or 0), device=device),
        "mae": lambda: MeanAbsoluteError(output_transform=units, device=device),
        "mse": lambda: MeanSquaredError(output_transform=units, device=device),
        "rmse": lambda: RootMeanSquaredError(output_transform=units, device=device),
        "r2": lambda: R2Score(output_transform=units, device=device),
    }
    return makers[name]()


def positive_probability(output: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probability of class 1, label): what ROC AUC ranks."""
    y_pred, y = output
    return torch.softmax(y_pred.float(), dim=1)[:, 1], y


def gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows, concatenated in rank order, whatever their numbers (``all_gather`` wants equal sizes)."""
    world = idist.get_world_size()
    if world == 1:
        return tensor
    sizes = [int(n) for n in idist.all_gather(torch.tensor([len(tensor)], device=tensor.device)).tolist()]
    longest = max(sizes)
    padded = torch.cat([tensor, tensor.new_zeros(longest - len(tensor), *tensor.shape[1:])])
    gathered = idist.all_gather(padded).reshape(world, longest, *tensor.shape[1:])
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])


class AUROC(ROC_AUC):
    """Ignite's ROC_AUC, gathering predictions from processes that hold different numbers of samples.

    Validation is sharded without padding (no sample counts twice), so two processes may hold 180 and
    179 samples; Ignite's EpochMetric gathers equal-sized tensors only (a gloo size mismatch otherwise).
    """

    def compute(self) -> float:
        """scikit-learn's roc_auc_score over every process's predictions (the same on every rank)."""
        if not self._predictions:
            raise NotComputableError("AUROC must have at least one example before it can be computed.")
        if self._result is None:
            predictions = gather_uneven(torch.cat(self._predictions, dim=0))
            targets = gather_uneven(torch.cat(self._targets, dim=0))
            self._result = self.compute_fn(predictions, targets)
        return self._result


def keep_tables(engine: Engine) -> None:
    """COMPLETED: move non-scalar metrics (the confusion matrix) out of ``state.metrics`` into ``state.tables``.

    Everything that reads ``state.metrics`` (TensorBoard, the epoch line, ``evaluate --json``) then sees scalars only.
    """
    engine.state.tables = {name: engine.state.metrics.pop(name) for name in TABLE_METRICS if name in engine.state.metrics}


def attach_tables(evaluator: Engine) -> None:
    """Register :func:`keep_tables` after the metrics' own COMPLETED handlers."""
    evaluator.add_event_handler(Events.COMPLETED, keep_tables)


def format_table(matrix: torch.Tensor) -> str:
    """A confusion matrix as a Markdown table: rows are true classes, columns predicted ones."""
    counts = matrix.to(torch.int64).tolist()
    head = "| true \\ predicted | " + " | ".join(str(j) for j in range(len(counts))) + " |"
    rule = "|---" * (len(counts) + 1) + "|"
    rows = [f"| {i} | " + " | ".join(str(c) for c in row) + " |" for i, row in enumerate(counts)]
    return "\n".join([head, rule, *rows])


def attach_table_logging(tb: Any, trainer: Engine, evaluator: Engine) -> None:
    """Write each validation's confusion matrix to TensorBoard's Text tab, at the trainer's iteration."""

    def log(engine: Engine) -> None:
        for name, value in getattr(engine.state, "tables", {}).items():
            tb.writer.add_text(f"val/{name}", format_table(value), trainer.state.iteration)

    evaluator.add_event_handler(Events.COMPLETED, log)


class Monitor:
    """The validation metric that decides (``--monitor val/NAME``, ``--mode``) and its best value so far.

    :meth:`score` is higher-is-better whatever the mode, as Ignite's EarlyStopping and Checkpoint want.
    """

    def __init__(self, monitor: str, mode: str | None = None) -> None:
        self.monitor = monitor
        self.key = monitor.partition("/")[2]
        self.mode = mode or metric_direction(self.key)
        self.sign = 1.0 if self.mode == "max" else -1.0
        self.best = float("nan")
        self.best_epoch = 0

    def value(self, engine: Engine) -> float:
        """The monitored metric's value in ``engine``'s last run."""
        return float(engine.state.metrics[self.key])

    def score(self, engine: Engine) -> float:
        """The value, negated for ``min``: higher is always better."""
        return self.sign * self.value(engine)

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (strictly)."""
        return self.best != self.best or self.sign * value > self.sign * self.best

    def update(self, evaluator: Engine, trainer: Engine) -> None:
        """Evaluator COMPLETED: remember a new best value and the epoch it came at."""
        value = self.value(evaluator)
        if self.improved(value):
            self.best, self.best_epoch = value, trainer.state.epoch

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        """Follow every validation."""
        evaluator.add_event_handler(Events.COMPLETED, lambda e: self.update(e, trainer))

    def state_dict(self) -> dict[str, Any]:
        """Plain values: what is monitored, how, the best value and its epoch."""
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best value; a checkpoint that monitored something else does not load."""
        if state.get("monitor") != self.monitor or state.get("mode") != self.mode:
            raise ValueError(f"the checkpoint monitored {state.get('monitor')} ({state.get('mode')}), "
                             f"this run monitors {self.monitor} ({self.mode})")
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


def check_monitor(monitor: str, names: Sequence[str]) -> None:
    """The monitored metric must be one the run computes."""
    key = monitor.partition("/")[2]
    if key not in names:
        raise UserError(f"--monitor {monitor}: the run does not compute {key}; add it to --metrics "
                        f"(computed: {', '.join(names)})")
