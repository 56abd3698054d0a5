"""--metrics against scikit-learn on the same predictions, and --monitor driving early stopping and the best model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn import metrics as skm

from conftest import FAST, assert_one_error_line, invoke_app, read_scalars
from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.io.checkpoint import train_checkpoints
from ignite_app.train.metrics import Monitor, attach_tables, format_table, metrics_for

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("torch_threads")


def newest_checkpoint(run_dir):
    """The newest resumable checkpoint of a run, loaded the safe way."""
    return torch.load(train_checkpoints(run_dir)[0], weights_only=True)


def evaluate_batches(metrics: dict, y_pred: torch.Tensor, y: torch.Tensor, batch: int = 37) -> dict:
    """Run Ignite's metrics over (y_pred, y) in uneven batches, as an evaluator would."""
    engine = Engine(lambda e, b: b)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    attach_tables(engine)
    batches = [(y_pred[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]
    engine.run(batches)
    return {**engine.state.metrics, **engine.state.tables}


@pytest.fixture(scope="module")
def classified():
    """Logits of 4 classes for 300 samples, right about 60% of the time, and their labels."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (300,), generator=g)
    logits = torch.randn(300, 4, generator=g)
    logits[torch.arange(300), y] += 1.0
    return logits, y


def classification_metric(name: str, logits: torch.Tensor, y: torch.Tensor):
    return evaluate_batches(metrics_for("classification", CPU, [name], num_classes=logits.shape[1]), logits, y)[name]


def test_accuracy_equals_sklearn(classified):
    logits, y = classified
    assert classification_metric("accuracy", logits, y) == pytest.approx(skm.accuracy_score(y, logits.argmax(1)))


def test_precision_is_macro_and_equals_sklearn(classified):
    logits, y = classified
    want = skm.precision_score(y, logits.argmax(1), average="macro")
    assert classification_metric("precision", logits, y) == pytest.approx(want, abs=1e-6)


def test_recall_is_macro_and_equals_sklearn(classified):
    logits, y = classified
    want = skm.recall_score(y, logits.argmax(1), average="macro")
    assert classification_metric("recall", logits, y) == pytest.approx(want, abs=1e-6)


def test_f1_is_macro_and_equals_sklearn(classified):
    logits, y = classified
    want = skm.f1_score(y, logits.argmax(1), average="macro")
    assert classification_metric("f1", logits, y) == pytest.approx(want, abs=1e-6)


def test_top_k_accuracy_equals_sklearn(classified):
    logits, y = classified
    want = skm.top_k_accuracy_score(y, logits.numpy(), k=2, labels=range(4))
    assert classification_metric("top2", logits, y) == pytest.approx(want)


def test_auroc_equals_sklearn_on_two_classes():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (200,), generator=g)
    logits = torch.randn(200, 2, generator=g)
    logits[:, 1] += y * 0.8
    want = skm.roc_auc_score(y.numpy(), torch.softmax(logits, 1)[:, 1].numpy())
    assert classification_metric("auroc", logits, y) == pytest.approx(want, abs=1e-6)


def test_confusion_matrix_equals_sklearn_and_is_kept_out_of_the_scalars(classified):
    logits, y = classified
    result = evaluate_batches(metrics_for("classification", CPU, ["confusion_matrix"], num_classes=4), logits, y)
    assert set(result) == {"loss", "confusion_matrix"}
    assert result["confusion_matrix"].tolist() == skm.confusion_matrix(y, logits.argmax(1)).tolist()
    table = format_table(result["confusion_matrix"])
    assert table.splitlines()[0] == "| true \\ predicted | 0 | 1 | 2 | 3 |" and len(table.splitlines()) == 6


@pytest.fixture(scope="module")
def regressed():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(250, 1, generator=g)
    return y + 0.3 * torch.randn(250, 1, generator=g), y


@pytest.mark.parametrize("name, reference", [
    ("mae", skm.mean_absolute_error),
    ("mse", skm.mean_squared_error),
    ("rmse", lambda y, p: np.sqrt(skm.mean_squared_error(y, p))),
    ("r2", skm.r2_score),
])
def test_regression_metric_equals_sklearn(regressed, name, reference):
    pred, y = regressed
    got = evaluate_batches(metrics_for("regression", CPU, [name]), pred, y)[name]
    assert got == pytest.approx(reference(y.numpy(), pred.numpy()), rel=1e-5)


def test_the_loss_comes_first_and_defaults_stay():
    assert list(metrics_for("classification", CPU)) == ["loss", "accuracy"]
    assert list(metrics_for("regression", CPU)) == ["loss", "mae"]


@pytest.mark.parametrize("call, match", [
    (lambda: metrics_for("classification", CPU, ["r2"], 3), r"--metrics r2 is a regression metric but this data is classification"),
    (lambda: metrics_for("regression", CPU, ["f1"]), r"--metrics f1 is a classification metric but this data is regression"),
    (lambda: metrics_for("classification", CPU, ["auroc"], 3), r"--metrics auroc is for two classes, this data has 3"),
    (lambda: metrics_for("classification", CPU, ["top5"], 3), r"top-5 accuracy needs more than 3 classes"),
    (lambda: Config(metrics="accuracy,f2"), r"invalid --metrics name 'f2': choose from accuracy, precision, recall, f1, topK \(e.g. top5\)"),
    (lambda: Config(monitor="accuracy"), r"invalid --monitor 'accuracy': use val/loss or val/NAME"),
    (lambda: Config(monitor="val/accuracy", mode="up"), r"invalid --mode 'up': choose one of min, max"),
])
def test_bad_metrics_and_monitors_are_user_errors(call, match):
    with pytest.raises(UserError, match=match):
        call()


def test_the_mode_follows_the_metric_unless_given():
    assert Config().monitor_mode == "min"
    assert Config(monitor="val/f1", metrics="f1").monitor_mode == "max"
    assert Config(monitor="val/mae", mode="max").monitor_mode == "max"


def test_monitor_state_round_trips_and_refuses_another_monitor():
    monitor = Monitor("val/accuracy", "max")
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    for epoch, value in enumerate([0.5, 0.7, 0.6], start=1):
        trainer.state.epoch, evaluator.state.metrics = epoch, {"accuracy": value}
        monitor.update(evaluator, trainer)
    assert monitor.state_dict() == {"monitor": "val/accuracy", "mode": "max", "best": 0.7, "best_epoch": 2}
    fresh = Monitor("val/accuracy")
    fresh.load_state_dict(monitor.state_dict())
    assert (fresh.best, fresh.best_epoch, fresh.score(evaluator)) == (0.7, 2, 0.6)
    with pytest.raises(ValueError, match="the checkpoint monitored val/accuracy"):
        Monitor("val/loss").load_state_dict(monitor.state_dict())


# --- real runs ---------------------------------------------------------------------------------

def test_monitor_on_accuracy_keeps_the_most_accurate_checkpoint_and_stops_on_it(tmp_path):
    run = tmp_path / "run"
    result = invoke_app("train", "--no-progress", "--model", "mlp", "--epochs", "14", "--patience", "2", "--lr", "0.01",
                        "--batch-size", "128", "--monitor", "val/accuracy", "--mode", "max", "--output-dir", str(run))
    assert result.exit_code == 0, result.output + result.stderr
    accuracy = read_scalars(run)["val/accuracy"]
    best_step, best = max(accuracy, key=lambda p: p[1])  # max() returns the earliest of equal values
    best_files = list((run / "checkpoints").glob("best_model_*.pt"))
    assert [p.name for p in best_files] == [f"best_model_{best_step}.pt"]
    last = newest_checkpoint(run)
    assert last["monitor"]["best"] == pytest.approx(best) and last["monitor"]["mode"] == "max"
    epoch_length = accuracy[0][0]
    assert len(accuracy) < 14, "this setting stops early on accuracy"
    assert accuracy[-1][0] == best_step + 2 * epoch_length  # exactly --patience epochs after the best accuracy
    assert f"early stopping at epoch {len(accuracy)}: val/accuracy did not improve for 2 epochs" in result.stdout
    evaluated = invoke_app("evaluate", str(run), "--json")
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(best)
    logs = invoke_app("logs", str(run))
    assert f"best_model_{best_step}.pt" in logs.stdout and "val/accuracy" in logs.stdout


def test_chosen_metrics_are_logged_evaluated_and_match_sklearn_on_the_predictions(tmp_path):
    run = tmp_path / "run"
    result = invoke_app("train", *FAST, "--epochs", "1", "--model", "mlp", "--output-dir", str(run),
                        "--metrics", "accuracy,f1,precision,recall,top3,confusion_matrix")
    assert result.exit_code == 0, result.output + result.stderr
    assert "val_f1" in result.stdout and "val_top3" in result.stdout and "confusion" not in result.stdout
    scalars = read_scalars(run)
    assert {"val/f1", "val/precision", "val/recall", "val/top3", "val/accuracy"} <= set(scalars)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert any("confusion_matrix" in tag for tag in acc.Tags()["tensors"])

    evaluated = json.loads(invoke_app("evaluate", str(run), "--json").stdout)
    assert evaluated["f1"] == pytest.approx(scalars["val/f1"][-1][1], abs=1e-6)

    from ignite_app.data.sources import load_splits
    from ignite_app.tools.inference import load_trained

    trained = load_trained(run, "cpu")  # the best model, as evaluate loads it
    val = load_splits(trained.cfg, trained.preprocess).val  # the validation split evaluate reads
    with torch.no_grad():
        labels = trained.model(val.x).argmax(1).numpy()
    y = val.y
    assert evaluated["f1"] == pytest.approx(skm.f1_score(y.numpy(), labels, average="macro"), abs=1e-6)
    assert evaluated["precision"] == pytest.approx(skm.precision_score(y.numpy(), labels, average="macro"), abs=1e-6)
    assert evaluated["confusion_matrix"] == skm.confusion_matrix(y.numpy(), labels).tolist()
    table = invoke_app("evaluate", str(run))
    assert "confusion_matrix (rows: true class, columns: predicted)" in table.stdout
    logs = invoke_app("logs", str(run)).stdout
    assert all(f"val/{name}" in logs for name in ("f1", "precision", "recall", "top3"))


def test_monitoring_a_metric_the_run_does_not_compute_is_one_error_line(tmp_path):
    result = invoke_app("train", *FAST, "--monitor", "val/f1", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output,
                          "--monitor val/f1: the run does not compute f1; add it to --metrics (computed: loss, accuracy)")
    assert not (tmp_path / "run").exists()
