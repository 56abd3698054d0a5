"""``ignite-app logs`` and what training now writes for TensorBoard.

Every number ``logs`` prints is checked against the event files read with TensorBoard's own
``EventAccumulator`` and against the checkpoints loaded with ``torch.load(weights_only=True)``;
the real ``tensorboard`` server is started on the run and asked for its tags over HTTP.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import assert_one_error_line, cli_env, invoke_app, read_scalars, run_app, train_tiny_run
from ignite_app.tools.logs import best_direction, early_stop_epoch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    """The suite's shared run: 2 epochs of the default CNN on digits (read only)."""
    return tiny_run


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """An MLP at lr 0.5 with patience 1: early stopping ends it within a few epochs."""
    return train_tiny_run(tmp_path_factory.mktemp("stopped") / "run", "--model", "mlp", "--lr", "0.5",
                          "--patience", "1", "--epochs", "10")


@pytest.fixture(scope="module")
def resumed_run(run_dir, tmp_path_factory) -> Path:
    """A copy of the module's run, resumed for a third epoch."""
    copy = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(run_dir, copy)
    result = invoke_app("train", "--resume", str(copy), "--epochs", "3", "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    return copy


@pytest.fixture(scope="module")
def logs_output(run_dir, tmp_path_factory) -> tuple[str, Path]:
    """The command on the run, with --csv and --plot: (stdout, folder of the two files)."""
    out = tmp_path_factory.mktemp("logs-out")
    result = invoke_app("logs", str(run_dir), "--csv", str(out / "scalars.csv"), "--plot", str(out / "curves.png"))
    assert result.exit_code == 0, result.stderr
    return result.stdout, out


def newest_checkpoint(run_dir: Path) -> dict:
    """The newest training checkpoint, loaded the safe way."""
    paths = sorted((run_dir / "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return torch.load(paths[-1], weights_only=True, map_location="cpu")


def table_rows(text: str) -> dict[str, list[str]]:
    """The cells of the table that starts with a ``tag`` header, by tag (columns split on 2+ spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tag "))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("wrote "):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def expected_best(series: list[tuple[int, float]], tag: str) -> tuple[int, float]:
    """The best point, computed here from the raw series: lowest loss, highest accuracy, earliest of equals."""
    pick = min if best_direction(tag) == "min" else max
    return pick(series, key=lambda point: point[1])


def check_cell(cell: str, value: float) -> None:
    """A printed value (4 significant digits) against the stored one."""
    assert float(cell) == pytest.approx(value, rel=1e-3, abs=1e-9)


# --- the summary against the event files -------------------------------------------------------

def test_logs_prints_last_and_best_of_every_scalar_as_the_event_files_hold_them(run_dir, logs_output):
    stdout, _ = logs_output
    scalars = read_scalars(run_dir)
    length = newest_checkpoint(run_dir)["trainer"]["epoch_length"]
    rows = table_rows(stdout)
    assert set(rows) == set(scalars)
    for tag, series in scalars.items():
        last_step, last_value = series[-1]
        row = rows[tag]
        check_cell(row[0], last_value)
        assert int(row[1]) == last_step
        assert float(row[2]) == pytest.approx(last_step / length, abs=0.005)
        if best_direction(tag) is None:
            assert row[3] == "-", tag
            continue
        best_step, best_value = expected_best(series, tag)
        check_cell(row[3], best_value)
        assert int(row[4]) == best_step
        assert float(row[5]) == pytest.approx(best_step / length, abs=0.005)


def test_logs_says_how_the_run_ended_and_where_the_best_checkpoint_is(run_dir, logs_output):
    stdout, _ = logs_output
    state = newest_checkpoint(run_dir)
    iteration, length = state["trainer"]["iteration"], state["trainer"]["epoch_length"]
    assert f"{run_dir}: completed {iteration // length}/2 epochs; {iteration} iterations, {length} per epoch" in stdout
    [best] = (run_dir / "checkpoints").glob("best_model_*.pt")
    step = int(best.stem.split("_")[-1])
    val_loss = dict(read_scalars(run_dir)["val/loss"])[step]
    line = next(line for line in stdout.splitlines() if "best checkpoint:" in line)
    assert f"best checkpoint: {best} (step {step}, epoch {step // length}, val/loss " in line
    check_cell(line.rsplit("val/loss ", 1)[1].rstrip(")"), val_loss)
    assert val_loss == min(v for _, v in read_scalars(run_dir)["val/loss"])


def test_csv_holds_every_scalar_value_exactly(run_dir, logs_output):
    _, out = logs_output
    with open(out / "scalars.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    written = {(r["tag"], int(r["step"])): float(r["value"]) for r in rows}
    stored = {(tag, step): value for tag, series in read_scalars(run_dir).items() for step, value in series}
    assert len(rows) == len(stored) and written == stored
    assert {r["run"] for r in rows} == {str(run_dir)}


def test_plot_is_a_non_empty_png(logs_output):
    _, out = logs_output
    data = (out / "curves.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_early_stopping_epoch_is_reported_from_the_checkpoint(stopped_run):
    state = newest_checkpoint(stopped_run)
    epoch = state["trainer"]["iteration"] // state["trainer"]["epoch_length"]
    assert state["early_stopping"]["counter"] >= 1 and epoch < 10
    result = invoke_app("logs", str(stopped_run))
    assert result.exit_code == 0, result.stderr
    assert f"{stopped_run}: stopped early at epoch {epoch} (no val-loss improvement for 1 epochs)" in result.stdout


@pytest.mark.parametrize("state, patience, expected", [
    ({"counter": 3, "best_score": -0.2}, 3, 4),  # counter reached patience: stopped at iteration // length
    ({"counter": 2, "best_score": -0.2}, 3, None),  # still patient: ended by --epochs or interrupted
    ({"counter": 9, "best_score": -0.2}, 0, None),  # early stopping off
    (None, 3, None),  # no early-stopping state saved
])
def test_early_stop_epoch(state, patience, expected):
    assert early_stop_epoch(state, patience, iteration=92, length=23) == expected


def test_several_runs_side_by_side(run_dir, resumed_run):
    result = invoke_app("logs", str(run_dir), str(resumed_run))
    assert result.exit_code == 0, result.stderr
    assert f"[1] {run_dir}: completed 2/2 epochs" in result.stdout
    assert f"[2] {resumed_run}: completed 3/3 epochs" in result.stdout
    rows = table_rows(result.stdout)
    for i, run in enumerate((run_dir, resumed_run)):
        series = read_scalars(run)["val/loss"]
        last, best = rows["val/loss"][2 * i : 2 * i + 2]
        check_cell(last, series[-1][1])
        value, epoch = re.fullmatch(r"(\S+) \((\S+)\)", best).groups()
        check_cell(value, expected_best(series, "val/loss")[1])


def test_a_folder_of_runs_stands_for_every_run_in_it(run_dir):
    result = invoke_app("logs", str(run_dir.parent))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{run_dir}: completed")


# --- what training writes for TensorBoard ------------------------------------------------------

def test_training_logs_speed_memory_and_lr_every_epoch(run_dir):
    scalars = read_scalars(run_dir)
    length = newest_checkpoint(run_dir)["trainer"]["epoch_length"]
    for tag in ("perf/samples_per_sec", "perf/peak_memory_mib"):
        assert [step for step, _ in scalars[tag]] == [length, 2 * length]
        assert all(value > 0 for _, value in scalars[tag])
    assert all(value == pytest.approx(1e-3) for _, value in scalars["train/lr/group_0"])


def accumulator(path: Path) -> EventAccumulator:
    """TensorBoard's reader over one run folder, keeping every event."""
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_config_text_and_hparams_are_written_once_even_after_resume(run_dir, resumed_run):
    for run, epochs in ((run_dir, 2), (resumed_run, 3)):
        acc = accumulator(run)
        [text] = acc.Tensors("config/text_summary")
        assert text.step == 0 and b"dataset: digits" in text.tensor_proto.string_val[0]
        assert len(list((run / "hparams").glob("events.out.tfevents.*"))) == 1
        hparams = accumulator(run / "hparams")
        assert set(hparams.PluginTagToContent("hparams")) == {
            "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
        final = {tag: [e.value for e in hparams.Scalars(tag)] for tag in hparams.Tags()["scalars"]}
        val_loss = read_scalars(run)["val/loss"]
        assert final["hparam/val_loss"] == [pytest.approx(val_loss[-1][1])]
        assert final["hparam/best_val_loss"] == [pytest.approx(min(v for _, v in val_loss))]
        assert final["hparam/epochs"] == [epochs]
    steps = [step for step, _ in read_scalars(resumed_run)["perf/samples_per_sec"]]
    assert steps == sorted(set(steps)) and len(steps) == 3  # no step logged twice across the resume


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    """GET (or POST ``body``) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.e2e  # a real process
def test_the_tensorboard_server_shows_the_runs_tags(run_dir):
    binary = Path(sys.executable).parent / "tensorboard"
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "tensorboard.main"]
    port = free_port()
    server = subprocess.Popen([*command, "--logdir", str(run_dir), "--host", "127.0.0.1", "--port", str(port)],
                              env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        tags: dict = {}
        deadline = time.monotonic() + 60
        while not tags.get("hparams") and time.monotonic() < deadline:  # the runs appear as they are loaded
            assert server.poll() is None, server.stderr.read()
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
            except OSError:
                time.sleep(0.2)
        assert set(tags["."]) == set(read_scalars(run_dir))
        assert {"perf/samples_per_sec", "perf/peak_memory_mib", "train/lr/group_0", "val/loss", "val/accuracy"} <= set(tags["."])
        assert {"hparam/val_loss", "hparam/val_accuracy", "hparam/best_val_loss"} <= set(tags["hparams"])
        assert get_json(f"{base}/data/plugin/text/tags") == {".": ["config/text_summary"]}
        experiment = get_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"lr", "batch_size", "model", "dataset"} <= {h["name"] for h in experiment["hparamInfos"]}
        assert "hparam/val_loss" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_exits_2_with_one_line(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (["logs", str(tmp_path / "missing")], "no such directory"),
        (["logs", str(tmp_path / "empty")], "not a run directory of ignite-app"),
        (["logs", str(run_dir), "--plot", str(tmp_path / "curves.jpg")], "unsupported file type '.jpg'"),
        (["logs", str(run_dir), "--csv", str(tmp_path / "nowhere" / "s.csv")], "does not exist"),
        (["logs"], "Missing argument"),
    ]
    for args, match in cases:
        result = invoke_app(*args)
        assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_bad_input_in_a_real_process(tmp_path):
    result = run_app("logs", str(tmp_path / "missing"))
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "no such directory")
