"""A stopped or killed run with MLflow on continues the same MLflow run on resume: continuous steps, none twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

from conftest import run_train, start_train, wait_for
from ignite_app.train.trackers import RUN_ID_FILE

EPOCH = 90  # iterations per epoch: 1438 digits training samples in batches of 16
EPOCHS = 3
LAST = EPOCH * EPOCHS


def args(out: Path, *extra: str) -> list[str]:
    """The MLP on digits, batches of 16, 3 epochs, TensorBoard and MLflow (the default SQLite store beside the run)."""
    return ["--no-progress", "--model", "mlp", "--batch-size", "16", "--epochs", str(EPOCHS), "--patience", "0",
            "--tracker", "tensorboard,mlflow", "--output-dir", str(out), *extra]


def logged_past(db: Path, step: int):
    """A condition for :func:`wait_for`: the store holds a train/loss value after ``step`` (read with sqlite3)."""

    def cond() -> bool:
        if not db.is_file():
            return False
        with sqlite3.connect(db, timeout=5) as conn:
            try:
                row = conn.execute("SELECT max(step) FROM metrics WHERE key = 'train/loss'").fetchone()
            except sqlite3.OperationalError:  # tables not created yet
                return False
        return row[0] is not None and row[0] > step

    cond.__doc__ = f"train/loss past step {step} in {db}"
    return cond


def stop(proc: subprocess.Popen, sig: signal.Signals) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def history(run_dir: Path) -> tuple[object, str, dict[str, list[int]]]:
    """The MLflow run of ``run_dir`` and the steps of each of its metrics, through mlflow's client."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    run = client.get_run(run_id)
    steps = {key: [m.step for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}
    return client, run_id, steps


def assert_one_continuous_run(run_dir: Path, run_id: str) -> None:
    """One MLflow run in the experiment, the same id, every step once and in order, the artifact there."""
    client, now_id, steps = history(run_dir)
    assert now_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert sorted(steps["train/loss"]) == steps["train/loss"] == list(range(10, LAST + 1, 10))
    assert steps["train/lr/group_0"] == list(range(10, LAST + 1, 10))
    assert steps["val/loss"] == steps["val/accuracy"] == [EPOCH, 2 * EPOCH, 3 * EPOCH]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")]


def test_sigterm_then_resume_continues_the_same_mlflow_run(tmp_path):
    out = tmp_path / "runs" / "run"
    proc = start_train(*args(out))
    wait_for(logged_past(tmp_path / "runs" / "mlflow.db", EPOCH), proc)
    code, _, err = stop(proc, signal.SIGTERM)
    assert code == 143, err
    run_id = (out / RUN_ID_FILE).read_text().strip()
    resumed = run_train("--no-progress", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_one_continuous_run(out, run_id)


def test_sigkill_after_steps_past_the_checkpoint_then_resume_logs_no_step_twice(tmp_path):
    out = tmp_path / "runs" / "run"
    proc = start_train(*args(out))
    wait_for(lambda: (out / "checkpoints" / f"checkpoint_{EPOCH}.pt.sha256").exists(), proc)
    wait_for(logged_past(tmp_path / "runs" / "mlflow.db", EPOCH + 10), proc)  # steps the checkpoint does not hold
    code, _, _ = stop(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    run_id = (out / RUN_ID_FILE).read_text().strip()
    resumed = run_train("--no-progress", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_one_continuous_run(out, run_id)


def test_a_resume_with_more_epochs_continues_the_run_and_keeps_its_first_params(tmp_path):
    out = tmp_path / "runs" / "run"
    first = run_train(*args(out, "--epochs", "1"))
    assert first.returncode == 0, first.stderr
    resumed = run_train("--no-progress", "--resume", str(out), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "MLflow" not in resumed.stderr  # MLflow params cannot change: they are not written again
    client, run_id, steps = history(out)
    assert steps["val/loss"] == [EPOCH, 2 * EPOCH] and steps["train/loss"] == list(range(10, 2 * EPOCH + 1, 10))
    run = client.get_run(run_id)
    assert run.data.params["epochs"] == "1" and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
