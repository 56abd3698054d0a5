"""One writer per run directory: real trainings started against each other (ignite_app.io.lock)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import torch

from conftest import FAST, run_train, start_train, wait_for
from ignite_app.io import checkpoint as ckpt


def test_two_trains_on_one_directory_started_together_exactly_one_trains(tmp_path):
    out = tmp_path / "run"
    procs = [start_train(*FAST, "--seed", str(seed), "--output-dir", str(out)) for seed in (1, 2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], results
    (winner, win_out, _), = [r for r in results if r[0].returncode == 0]
    (loser, _, lose_err), = [r for r in results if r[0].returncode == 2]
    assert re.fullmatch(rf"Error: {out} is in use by pid {winner.pid} on host \S+ since \S+; wait for that run "
                        r"to end or stop it, or choose another --output-dir\n", lose_err), lose_err
    assert "done: 2 epoch(s)" in win_out
    # one run's files only: the config names the winner's seed, every step is logged once
    seed = 1 if winner is procs[0] else 2
    assert f"seed: {seed}\n" in (out / "config.yaml").read_text()
    state = torch.load(ckpt.train_checkpoints(out)[0], weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]


def test_resume_of_a_running_run_exits_2_and_the_running_one_is_unharmed(tmp_path):
    out = tmp_path / "run"
    proc = start_train("--no-progress", "--epochs", "500", "--patience", "0", "--output-dir", str(out))
    wait_for(lambda: bool(ckpt.train_checkpoints(out)), proc)
    second = run_train("--no-progress", "--resume", str(out))
    assert second.returncode == 2 and second.stdout == "", second.stdout + second.stderr
    assert re.fullmatch(rf"Error: {out} is in use by pid {proc.pid} on host \S+ since \S+; .*\n", second.stderr), second.stderr
    assert proc.poll() is None  # still training
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143 and stderr.strip() == "", stderr
    epoch = int(re.search(r"stopped by SIGTERM at iteration \d+ \(epoch (\d+)\)", stdout).group(1))
    newest = ckpt.train_checkpoints(out)[0]
    assert f"checkpoint {newest}" in stdout
    ckpt.read_checkpoint(newest, require_checksum=True)
    assert not list((out / ckpt.CHECKPOINT_DIR).glob(".*.tmp"))
    # once it has ended the directory is free again, and the run continues from where it stopped
    again = run_train("--no-progress", "--resume", str(out), "--epochs", str(epoch + 1))
    assert again.returncode == 0 and f"done: {epoch + 1} epoch(s)" in again.stdout, again.stderr
    assert "removed" not in again.stderr
