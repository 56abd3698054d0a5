"""The run-directory lock and the atomic choice of new run directories (ignite_app.io.lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from ignite_app.config import default_output_dir
from ignite_app.errors import UserError
from ignite_app.io.lock import LOCK_FILE, RunLock, claim_new_dir, claim_run_dir, lock_run_dir, read_holder

HOLD = """
import sys, time
from ignite_app.io.lock import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def hold_in_child(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``run_dir`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_twenty_runs_started_in_the_same_second_get_twenty_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frozen = default_output_dir("digits", datetime(2026, 1, 2, 3, 4, 5))  # every run sees the same clock

    def claim(_: int) -> str:
        out, lock = claim_run_dir(None, frozen, fresh=True)
        return out  # the lock stays held, as during a run

    with ThreadPoolExecutor(max_workers=20) as pool:
        names = list(pool.map(claim, range(20)))
    assert len(set(names)) == 20
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(Path(n).name for n in names)
    assert "digits-20260102-030405" in {Path(n).name for n in names}
    assert "digits-20260102-030405-20" in {Path(n).name for n in names}


def test_a_claimed_directory_is_new_even_when_the_base_exists(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run-2").write_text("a file")
    folder, created = claim_new_dir(tmp_path / "run")
    assert folder == tmp_path / "run-3" and created == [folder]


def test_a_held_lock_is_refused_with_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
    holder = hold_in_child(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"{tmp_path} is in use by pid {holder.pid} on host \S+ since 20"):
            lock_run_dir(tmp_path)
        assert read_holder(tmp_path / LOCK_FILE)["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_run_dir(tmp_path)  # the kernel freed the killed holder's lock: taken over
    assert read_holder(tmp_path / LOCK_FILE)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()  # a free directory has no lock file


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path):
    with lock_run_dir(tmp_path):
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_a_fresh_run_refuses_a_directory_with_files_and_leaves_no_lock_file_in_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files; continue that run with --resume"):
        claim_run_dir(str(tmp_path), "unused", fresh=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_directory_that_a_failed_run_created_is_removed_again(tmp_path):
    out, lock = claim_run_dir(str(tmp_path / "a" / "b"), "unused", fresh=True)
    assert Path(out).is_dir()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_output_dir_below_a_regular_file_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        claim_run_dir(str(tmp_path / "file" / "run"), "unused", fresh=True)


def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / LOCK_FILE)
    with pytest.raises(UserError, match="is not a regular file"):
        lock_run_dir(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_parent_is_one_error(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write the run directory .* choose a writable --output-dir"):
            claim_run_dir(str(parent / "run"), "unused", fresh=True)
    finally:
        parent.chmod(0o700)


CLAIM = """
import sys
from ignite_app.io.lock import claim_run_dir
out, lock = claim_run_dir(None, sys.argv[1], fresh=True)
print(out, flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin
"""


@pytest.mark.e2e  # a real process (or a real store): seconds, not milliseconds
def test_twenty_processes_started_in_the_same_second_get_twenty_directories(tmp_path):
    frozen = str(tmp_path / "runs" / "digits-20260102-030405")  # the name each process's clock would give
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, frozen], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(20)]
    names = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.communicate("")
    assert all(p.returncode == 0 for p in procs)
    assert len(set(names)) == 20 and all(Path(n).parent == tmp_path / "runs" for n in names)
