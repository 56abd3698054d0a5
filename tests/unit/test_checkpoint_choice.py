"""The right checkpoint by number: best and newest by the iteration in the name; a roll-back keeps newer files aside."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import invoke_app, train_tiny_run
from ignite_app.io import checkpoint as ckpt

EPOCH = 23  # digits, 1438 training samples in batches of 64


def test_best_model_is_chosen_by_iteration_not_by_text(tmp_path):
    folder = tmp_path / ckpt.CHECKPOINT_DIR
    folder.mkdir()
    for name in ("best_model_90.pt", "best_model_1080.pt", "best_model_999.pt", "best_model_x.pt"):
        (folder / name).write_bytes(b"x")
    assert ckpt.best_checkpoint(tmp_path) == folder / "best_model_1080.pt"
    for name in ("checkpoint_90.pt", "checkpoint_1080.pt", "checkpoint_999.pt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in ckpt.train_checkpoints(tmp_path)] == ["checkpoint_1080.pt", "checkpoint_999.pt", "checkpoint_90.pt"]


def test_set_aside_moves_newer_files_with_their_sidecars_and_never_overwrites(tmp_path):
    folder = tmp_path / ckpt.CHECKPOINT_DIR
    folder.mkdir()
    for name in ("checkpoint_180.pt", "checkpoint_270.pt", "best_model_270.pt", "best_model_90.pt"):
        (folder / name).write_bytes(name.encode())
        (folder / (name + ".sha256")).write_text("digest")
    moved = ckpt.set_aside_newer(tmp_path, 180)
    aside = folder / ckpt.ROLLED_BACK_DIR
    assert moved == [aside / "best_model_270.pt", aside / "checkpoint_270.pt"]
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best_model_90.pt", "checkpoint_180.pt"]
    assert (aside / "checkpoint_270.pt.sha256").read_text() == "digest"
    (folder / "checkpoint_270.pt").write_bytes(b"second history")
    assert ckpt.set_aside_newer(tmp_path, 180) == [aside / "checkpoint_270.1.pt"]
    assert (aside / "checkpoint_270.pt").read_bytes() == b"checkpoint_270.pt"


@pytest.fixture(scope="module")
def five_epochs(tmp_path_factory) -> Path:
    """A finished 5-epoch MLP run on digits keeping two checkpoints: checkpoint_92 and checkpoint_115."""
    return train_tiny_run(tmp_path_factory.mktemp("rollback") / "run", "--model", "mlp", "--epochs", "5")


def test_a_roll_back_keeps_the_newer_checkpoints_aside_and_later_messages_name_the_right_file(five_epochs, tmp_path):
    run = Path(shutil.copytree(five_epochs, tmp_path / "run"))
    folder = run / ckpt.CHECKPOINT_DIR
    assert [p.name for p in ckpt.train_checkpoints(run)] == [f"checkpoint_{5 * EPOCH}.pt", f"checkpoint_{4 * EPOCH}.pt"]
    newest_bytes = (folder / f"checkpoint_{5 * EPOCH}.pt").read_bytes()

    # a deliberate roll-back to epoch 4, stopped after one iteration (the time limit is already up)
    back = invoke_app("train", "--no-progress", "--resume", str(folder / f"checkpoint_{4 * EPOCH}.pt"), "--time-limit", "0.000001")
    assert back.exit_code == 0, back.output + back.stderr
    stopped = 4 * EPOCH + 1
    assert f"stopped by time-limit at iteration {stopped}" in back.stdout
    assert f"; checkpoint {folder / f'checkpoint_{stopped}.pt'};" in back.stdout  # not the newer checkpoint_115
    aside = folder / ckpt.ROLLED_BACK_DIR
    assert (aside / f"checkpoint_{5 * EPOCH}.pt").read_bytes() == newest_bytes  # moved, not deleted
    assert f"moved checkpoint_{5 * EPOCH}.pt to {aside}" in back.stderr

    # resuming the directory now continues the rolled-back history, and deletes none of its files
    done = invoke_app("train", "--no-progress", "--resume", str(run), "--time-limit", "1h")
    assert done.exit_code == 0, done.output + done.stderr
    assert f"resuming from {folder / f'checkpoint_{stopped}.pt'}" in done.stdout
    assert "removed" not in done.stderr
    assert re.search(rf"done: 5 epoch\(s\); checkpoint {re.escape(str(folder / f'checkpoint_{5 * EPOCH}.pt'))}", done.stdout)
    state = ckpt.read_checkpoint(folder / f"checkpoint_{5 * EPOCH}.pt", require_checksum=True)
    assert state["trainer"]["iteration"] == 5 * EPOCH
    assert (aside / f"checkpoint_{5 * EPOCH}.pt").read_bytes() == newest_bytes


def test_a_finished_run_names_its_own_checkpoint_not_a_stray_newer_file(five_epochs, tmp_path):
    run = Path(shutil.copytree(five_epochs, tmp_path / "run"))
    folder = run / ckpt.CHECKPOINT_DIR
    (folder / "checkpoint_99999.pt").write_bytes(b"stray")
    result = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "6")
    assert result.exit_code == 0, result.output + result.stderr
    assert f"resuming from {folder / f'checkpoint_{5 * EPOCH}.pt'}" in result.stdout
    assert f"done: 6 epoch(s); checkpoint {folder / f'checkpoint_{6 * EPOCH}.pt'};" in result.stdout
    assert (folder / ckpt.ROLLED_BACK_DIR / "checkpoint_99999.pt").read_bytes() == b"stray"
