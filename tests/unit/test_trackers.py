"""MLflow through Ignite's MLflowLogger: a real SQLite store read back with mlflow's own client."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, assert_one_error_line, invoke_app
from ignite_app.config import Config, tracker_names
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.train.trackers import RUN_ID_FILE

EPOCH = 23  # iterations per epoch: 1438 digits training samples in batches of 64


def mlflow_client(run_dir: Path):
    """mlflow's client on the default store beside ``run_dir``, and the run's id."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    return mlflow.MlflowClient(), (run_dir / RUN_ID_FILE).read_text().strip()


def steps(client, run_id: str, key: str) -> list[int]:
    """The steps of one metric's history, in logging order."""
    return [m.step for m in client.get_metric_history(run_id, key)]


def train(out: Path, *extra: str):
    """``ignite-app train`` in-process, on one thread: 2 epochs of the MLP on digits, MLflow on."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invoke_app("train", *FAST, "--model", "mlp", "--tracker", "tensorboard,mlflow", "--output-dir", str(out), *extra)
    finally:
        torch.set_num_threads(before)


def test_tracker_names_keep_tensorboard_first_and_refuse_unknown_ones():
    assert tracker_names("mlflow") == ("tensorboard", "mlflow")
    assert tracker_names("MLflow, tensorboard,mlflow") == ("tensorboard", "mlflow")
    with pytest.raises(UserError, match="invalid --tracker 'wandb': choose from tensorboard, mlflow"):
        Config(tracker="tensorboard,wandb")


@pytest.mark.e2e  # a real process (or a real store): seconds, not milliseconds
def test_a_real_store_gets_params_metrics_at_the_tensorboard_steps_and_the_best_checkpoint(tmp_path):
    out = tmp_path / "runs" / "mlp-a"
    result = train(out)
    assert result.exit_code == 0, result.output + result.stderr
    assert "INFO" not in result.stderr  # mlflow's own log lines stay out of the output
    client, run_id = mlflow_client(out)
    run = client.get_run(run_id)
    assert (run.info.run_name, run.info.status) == ("mlp-a", "FINISHED")
    assert client.get_experiment(run.info.experiment_id).name == "runs"  # the folder holding the run directory
    assert run.data.params["lr"] == "0.001" and run.data.params["model"] == "mlp" and "output_dir" not in run.data.params
    assert steps(client, run_id, "train/loss") == [10, 20, 30, 40]  # --log-every 10, the trainer's iteration
    assert steps(client, run_id, "train/lr/group_0") == [10, 20, 30, 40]
    assert steps(client, run_id, "val/loss") == steps(client, run_id, "val/accuracy") == [EPOCH, 2 * EPOCH]
    assert steps(client, run_id, "final/best_val_loss") == [2 * EPOCH]
    assert run.data.metrics["final/epochs"] == 2.0
    best = ckpt.best_checkpoint(out)
    artifacts = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert artifacts == [f"checkpoints/{best.name}"]
    local = Path(client.download_artifacts(run_id, f"checkpoints/{best.name}", str(tmp_path)))
    assert local.read_bytes() == best.read_bytes()
    assert (tmp_path / "runs" / "mlartifacts").is_dir() and not Path("mlruns").exists()


@pytest.mark.e2e  # a real process (or a real store): seconds, not milliseconds
def test_a_store_failing_mid_run_warns_once_and_training_and_checkpoints_go_on(tmp_path, monkeypatch):
    import mlflow

    from mlflow.exceptions import MlflowException

    calls = {"n": 0}
    real = mlflow.log_metrics

    def failing_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise MlflowException("connection reset by the tracking server")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_metrics", failing_after_two)
    out = tmp_path / "runs" / "a"
    result = train(out)
    assert result.exit_code == 0, result.output + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "MLflow logging failed" in line]
    assert len(warnings) == 1 and "connection reset" in warnings[0] and "training and checkpoints go on" in warnings[0]
    assert "done: 2 epoch(s)" in result.output
    names = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert names == ["best_model_46.pt", "checkpoint_23.pt", "checkpoint_46.pt"]
    assert ckpt.read_checkpoint(out / "checkpoints" / "checkpoint_46.pt", require_checksum=True)["trainer"]["iteration"] == 46
    client, run_id = mlflow_client(out)
    # the first two writes (train/loss and train/lr at iteration 10) are kept; nothing is written after the failure
    assert steps(client, run_id, "train/loss") == steps(client, run_id, "train/lr/group_0") == [10]
    assert client.get_run(run_id).data.metrics.keys() == {"train/loss", "train/lr/group_0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_tracking_server_that_cannot_be_reached_is_one_error_line_and_nothing_written(tmp_path):
    out = tmp_path / "run"
    result = train(out, "--mlflow-uri", f"http://127.0.0.1:{free_port()}")
    assert_one_error_line(result.exit_code, result.stderr, result.output, "cannot open the MLflow run")
    assert not out.exists()


def test_a_missing_mlflow_extra_is_one_error_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    result = train(tmp_path / "run")
    assert_one_error_line(result.exit_code, result.stderr, result.output, 'pip install "ignite_app[mlflow]"')
    assert not (tmp_path / "run").exists()

