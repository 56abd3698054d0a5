"""Hostile files in real processes: no hang, no blow-up, one line (the in-process cases: tests/unit/test_hostile_input.py)."""

from __future__ import annotations

import os

from conftest import BILLION_LAUGHS, assert_one_error_line, run_app, run_train


def test_billion_laughs_exits_2_with_one_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    result = run_train("--config", str(bomb), "--output-dir", str(tmp_path / "out"), timeout=60)
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "anchors and aliases (&a) are not allowed")
    assert not (tmp_path / "out").exists()


def test_fifos_as_config_or_event_file_never_hang(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")
    result = run_train("--config", str(tmp_path / "config.yaml"), timeout=60)  # a hang fails here
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "is a FIFO")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("dataset: digits\nmodel: mlp\n")
    os.mkfifo(run / "events.out.tfevents.1.host")
    result = run_app("logs", str(run), timeout=60)
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "is a FIFO, not a regular file")
