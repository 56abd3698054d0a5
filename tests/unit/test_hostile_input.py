"""Hostile or unlucky input is bounded work and one ``Error:`` line: YAML bombs, special files, huge values."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from conftest import BILLION_LAUGHS, assert_one_error_line, invoke_app, train_tiny_run, write_sidecar
from ignite_app.config import load_yaml
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.io.safefile import short


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch digits run (MLP) to resume and look at."""
    return train_tiny_run(tmp_path_factory.mktemp("hostile") / "run", "--model", "mlp")


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run that a test may change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def train(*args: str):
    """``ignite-app train ARGS`` in-process."""
    return invoke_app("train", "--no-progress", *args)


def test_billion_laughs_config_is_refused_at_once_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 400
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"is not valid YAML \(anchors and aliases \(&a\) are not allowed\)"):
            load_yaml(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # the expanded document would be 3.6 GB
    result = train("--config", str(bomb), "--output-dir", str(tmp_path / "out"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "anchors and aliases")
    assert not (tmp_path / "out").exists()


def test_a_bomb_in_a_run_directory_config_is_refused_on_resume(run_copy):
    (run_copy / "config.yaml").write_text(BILLION_LAUGHS)
    result = train("--resume", str(run_copy))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "anchors and aliases")


@pytest.mark.parametrize("text, match", [
    ("[" * 5000 + "]" * 5000, "nested more than 20 levels deep"),
    ("".join(" " * i + f"k{i}:\n" for i in range(100)), "nested more than 20 levels deep"),
    ("epochs: 1\n" + "# padding\n" * 200_000, "more than the 1048576 allowed"),
    ("epochs: .inf\n", "invalid --epochs inf: expected an integer"),
    ("epochs: " + "9" * 5000 + "\n", "holds a value that cannot be read"),
    ("1: 2\n", "has the key 1, which is not a name"),
    ("[a, b]: 2\n", "is not valid YAML (while constructing a mapping)"),
    ("seed: 4294967296\n", "invalid --seed 4294967296: expected an integer from 0 to 2147483647"),
    ("device: [" + "'x' , " * 10000 + "]\n", "invalid --device ['x', 'x', 'x', 'x', ...]: expected a string"),
    ("dataset: '" + "d" * 100_000 + "'\n", "invalid --dataset 'ddddd"),
])
def test_hostile_config_values_are_one_short_line(tmp_path, text, match):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = train("--config", str(config), "--output-dir", str(tmp_path / "out"))
    line = assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert len(line) < 400
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [
    ("--seed", "4294967296"), ("--epochs", str(2**64)), ("--n-saved", str(2**63)), ("--log-every", str(2**63)),
    ("--patience", str(2**70)), ("--batch-size", str(2**63)),
])
def test_integers_beyond_what_torch_and_tensorboard_take_are_refused(tmp_path, flag, value):
    result = train(flag, value, "--output-dir", str(tmp_path / "out"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, f"invalid {flag} ")
    assert "expected an integer from" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_utf8_is_one_line_and_a_bom_is_fine(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("dataset: d\xe9j\xe0\n".encode("latin-1"))
    result = train("--config", str(config), "--output-dir", str(tmp_path / "out"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "is not UTF-8 text (byte 10); save it as UTF-8")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfepochs: 3\n")
    assert load_yaml(bom) == {"epochs": 3}


def test_a_fifo_as_config_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = train("--config", str(fifo), "--output-dir", str(tmp_path / "out"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "is a FIFO, not a regular file")


def test_a_fifo_as_event_file_is_refused_by_logs_without_waiting(run_copy):
    os.mkfifo(run_copy / "events.out.tfevents.1.host.fifo")
    result = invoke_app("logs", str(run_copy))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "is a FIFO, not a regular file; remove it")


@pytest.mark.parametrize("make", ["fifo", "dev-zero", "directory-name"])
def test_resume_of_a_special_file_is_refused_not_replaced_by_another_checkpoint(run_copy, make):
    target = run_copy / ckpt.CHECKPOINT_DIR / "checkpoint_5.pt"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "dev-zero":
        target = Path("/dev/zero")
    else:
        target.mkdir()
    result = train("--resume", str(target))
    kind = {"fifo": "is a FIFO", "dev-zero": "is a character device"}.get(make)
    if kind:
        assert_one_error_line(result.exit_code, result.stderr, result.output, kind)
    else:  # a directory named like a checkpoint is not a run directory
        assert_one_error_line(result.exit_code, result.stderr, result.output, "holds no config.yaml")
    assert "resuming from" not in result.output


def test_a_huge_checkpoint_is_refused_by_size_before_it_is_hashed(run_copy, monkeypatch):
    import hashlib

    huge = run_copy / ckpt.CHECKPOINT_DIR / "checkpoint_999999.pt"
    with open(huge, "wb") as f:
        f.truncate(4 * 2**30)  # sparse: 4 GiB that take no disk
    (run_copy / ckpt.CHECKPOINT_DIR / "checkpoint_999999.pt.sha256").write_text("0" * 64 + "  checkpoint_999999.pt\n")
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    with pytest.raises(ckpt.CheckpointError, match=r"4294967296 bytes, more than a checkpoint of this run can hold"):
        ckpt.read_checkpoint(huge, max_bytes=2**30)
    assert not hashed
    monkeypatch.setenv(ckpt.MAX_BYTES_ENV, str(2**31))
    with pytest.raises(ckpt.CheckpointError, match="more than a checkpoint of this run can hold"):
        ckpt.read_checkpoint(huge)
    result = train("--resume", str(run_copy), "--epochs", "3")  # skips it for the real newest one
    assert result.exit_code == 0, result.output + result.stderr
    assert "skipping checkpoint" in result.stderr and "4294967296 bytes" in result.stderr


def test_a_binary_sidecar_on_the_newest_checkpoint_falls_back_to_the_one_before(run_copy):
    folder = run_copy / ckpt.CHECKPOINT_DIR
    newest, older = ckpt.train_checkpoints(run_copy)[:2]
    newest.with_name(newest.name + ".sha256").write_bytes(b"\xff\xfe\x00binary")
    result = train("--resume", str(run_copy), "--epochs", "3")
    assert result.exit_code == 0, result.output + result.stderr
    assert f"resuming from {older}" in result.output
    assert "SHA-256 does not match" in result.stderr
    assert folder.is_dir()


def test_short_quotes_a_prefix_of_any_value():
    assert "..." in short("x" * 10_000) and len(short("x" * 10_000)) <= 60
    assert short(10**5000) == "<an integer of 16610 bits>"
    assert short([[[[1]]]] * 1000) == "[[[...]], [[...]], [[...]], [[...]], ...]"
    assert short(-1.0) == "-1.0"
