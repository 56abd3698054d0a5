"""A real ``mlflow server`` on 127.0.0.1: ``train --mlflow-uri http://...`` logs params, metrics and the artifact to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import FAST, cli_env, read_scalars, run_train
from ignite_app.io import checkpoint as ckpt
from ignite_app.train.trackers import RUN_ID_FILE

START_TIMEOUT = 90.0  # seconds: the server imports for ~30 s on a busy 2-core machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    """Whether the server's ``/health`` endpoint answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll the server until it answers; fail with its log if it exits or ``START_TIMEOUT`` passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(url):
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}) before answering:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer {url} within {START_TIMEOUT:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """End the server and every process it started (uvicorn's worker): its whole process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind by the leader
    except ProcessLookupError:
        pass


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free port of 127.0.0.1, SQLite store and artifacts under ``tmp_path``; its URL."""
    beside = Path(sys.executable).parent / "mlflow"  # the venv's, also when its bin/ is not on PATH
    executable = str(beside) if beside.exists() else shutil.which("mlflow")
    if executable is None:
        pytest.skip("no `mlflow` executable: the server needs the full mlflow package (pip install -e '.[dev]')")
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    command = [executable, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts")]
    # no background job runner: it starts a dozen huey consumers that this test does not need
    env = cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(proc, url, log)
        yield url
    finally:
        stop_server(proc)


def test_a_tracking_server_gets_params_metrics_at_the_tensorboard_steps_and_the_best_checkpoint(tmp_path, mlflow_server):
    import mlflow

    out = tmp_path / "runs" / "mlp-a"
    result = run_train(*FAST, "--model", "mlp", "--tracker", "mlflow", "--mlflow-uri", mlflow_server,
                       "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MLflow logging failed" not in result.stderr
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run_id = (out / RUN_ID_FILE).read_text().strip()
    run = client.get_run(run_id)
    assert (run.info.run_name, run.info.status) == ("mlp-a", "FINISHED")
    assert client.get_experiment(run.info.experiment_id).name == "runs"
    assert run.data.params["lr"] == "0.001" and run.data.params["model"] == "mlp" and run.data.params["epochs"] == "2"
    assert "output_dir" not in run.data.params
    tensorboard = read_scalars(out)
    for key in ("train/loss", "train/lr/group_0", "val/loss", "val/accuracy"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [step for step, _ in tensorboard[key]], key
        assert [m.value for m in history] == pytest.approx([value for _, value in tensorboard[key]], rel=1e-6), key
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [23, 46]  # 23 iterations an epoch
    assert run.data.metrics["final/epochs"] == 2.0
    best = ckpt.best_checkpoint(out)
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [f"checkpoints/{best.name}"]
    (tmp_path / "download").mkdir()
    local = Path(client.download_artifacts(run_id, f"checkpoints/{best.name}", str(tmp_path / "download")))
    assert local.read_bytes() == best.read_bytes()
    # the store and the artifacts live with the server, nothing beside the run or in the working directory
    assert not (tmp_path / "runs" / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "server" / "artifacts").rglob(best.name))
