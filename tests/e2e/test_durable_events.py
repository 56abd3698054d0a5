"""TensorBoard events are on disk with every checkpoint, and a broken event writer ends the run, never hangs it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from conftest import FAST, read_scalars, run_train, start_train, wait_for
from ignite_app.io import checkpoint as ckpt


def published_after(out: Path, iteration: int) -> int | None:
    """The newest checkpoint past ``iteration`` whose sidecar is written (the save is complete), if any."""
    for path in ckpt.train_checkpoints(out):
        step = int(path.stem.split("_")[1])
        if step > iteration and path.with_name(path.name + ".sha256").is_file():
            return step
    return None


def test_sigkill_right_after_each_of_10_checkpoints_loses_no_val_point(tmp_path):
    out = tmp_path / "run"
    args = ["--no-progress", "--epochs", "40", "--patience", "0"]
    last, kills = 0, 0
    proc = start_train(*args, "--output-dir", str(out))
    while kills < 10:
        wait_for(lambda: published_after(out, last) is not None, proc)
        proc.send_signal(signal.SIGKILL)  # within ~10 ms of the checkpoint's publication
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        last, kills = published_after(out, last), kills + 1
        epoch_length = ckpt.read_checkpoint(out / ckpt.CHECKPOINT_DIR / f"checkpoint_{last}.pt")["trainer"]["epoch_length"]
        scalars = read_scalars(out)
        for tag in ("val/loss", "val/accuracy"):
            steps = {step for step, _ in scalars[tag]}
            expected = set(range(epoch_length, last + 1, epoch_length))
            assert expected <= steps, f"kill {kills} after checkpoint_{last}: {tag} lost steps {sorted(expected - steps)}"
        proc = start_train("--no-progress", "--resume", str(out))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_failing_event_writer_exits_4_with_one_line(tmp_path):
    out = tmp_path / "run"
    # records: file version, config text, then the training scalars; the 30th write fails with ENOSPC
    result = run_train(*FAST, "--epochs", "50", "--output-dir", str(out), timeout=120, TEST_FAULT="enospc-events:30")
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: no space left on device while writing TensorBoard events in {out}; free some space, then continue with --resume"]
    assert "done:" not in result.stdout


def test_a_full_tmpfs_during_training_exits_4_and_never_hangs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); the fault hook covers it")
    try:
        out = mount / "run"
        proc = start_train("--no-progress", "--epochs", "1000", "--patience", "0", "--log-every", "1", "--output-dir", str(out))
        wait_for(lambda: published_after(out, 0) is not None, proc)
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k"], capture_output=True)  # until ENOSPC
        stdout, stderr = proc.communicate(timeout=120)  # a hang fails here
        assert proc.returncode == 4, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: no space left on device while writing"), stderr
    finally:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", str(mount)], check=True)
