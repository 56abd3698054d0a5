"""``ignite-app tune`` for real: pruning, two processes on one study, a SIGKILL mid-trial then a rerun."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import cli_env, run_app, wait_for

SEARCH = "lr: {log_uniform: [1.0e-4, 3.0e-2]}\nbatch_size: {choice: [32, 64, 128]}\n"


def tune_args(study: Path, search: Path, trials: int, *extra: str) -> list[str]:
    """A small study: the MLP on digits, few epochs, no early stopping."""
    return ["tune", "--trials", str(trials), "--search", str(search), "--output-dir", str(study), "--model", "mlp",
            "--patience", "0", "--no-progress", *extra]


def start_tune(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ignite_app.cli", *args], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_trials(study: Path) -> list:
    """Every trial of the study, read back from its journal file with Optuna itself."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study / "study.journal")))
    return optuna.load_study(study_name=study.name, storage=storage).get_trials()


def states(trials: list) -> list[str]:
    return sorted(t.state.name for t in trials)


def trial_dirs(study: Path) -> list[str]:
    return sorted(p.name for p in study.iterdir() if p.is_dir())


def search_file(tmp_path: Path, text: str = SEARCH) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


def test_six_trials_with_successive_halving_prune_some_and_leave_six_runs_that_logs_reads(tmp_path):
    study = tmp_path / "study"
    result = run_app(*tune_args(study, search_file(tmp_path), 6, "--epochs", "3", "--pruner", "halving",
                                "--sampler-seed", "0"))
    assert result.returncode == 0, result.stderr
    trials = load_trials(study)
    assert len(trials) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), states(trials)
    assert sum(t.state.name == "PRUNED" for t in trials) >= 1
    assert trial_dirs(study) == [f"trial-{n:03d}" for n in range(6)]
    assert {t.user_attrs["run_dir"] for t in trials} == {str(study / f"trial-{n:03d}") for n in range(6)}
    logs = run_app("logs", str(study))
    assert logs.returncode == 0, logs.stderr
    assert all(f"[{n + 1}] {study / f'trial-{n:03d}'}:" in logs.stdout for n in range(6)), logs.stdout
    # the best trial, as a ready command that trains it again
    command = re.search(r"train it again: ignite-app (train --config \S+ --output-dir) \S+", result.stdout)
    assert command, result.stdout
    again = run_app(*command.group(1).split(), str(tmp_path / "again"), "--epochs", "1")
    assert again.returncode == 0, again.stderr
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"batch {best.params['batch_size']}," in again.stdout


def test_two_tune_processes_on_one_storage_run_distinct_trials_and_finish_the_study(tmp_path):
    study, search = tmp_path / "study", search_file(tmp_path)
    args = tune_args(study, search, 4, "--epochs", "2", "--pruner", "none")
    first, second = start_tune(*args), start_tune(*args)
    outputs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trials = [t for t in load_trials(study) if not t.user_attrs.get("surplus")]  # a trial asked at once by both
    assert states(trials) == ["COMPLETE"] * 4
    assert {t.user_attrs["pid"] for t in trials} == {first.pid, second.pid}  # both processes ran trials
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == 4 and len(trial_dirs(study)) == 4
    for run_dir in dirs:  # each trial trained once, by one process: one event file, no resume
        assert len(list(Path(run_dir).glob("events.out.tfevents.*"))) == 1


def test_sigkill_during_a_trial_then_rerunning_tune_resumes_it_and_repeats_no_finished_trial(tmp_path):
    study, search = tmp_path / "study", search_file(tmp_path, "lr: {log_uniform: [1.0e-3, 1.0e-2]}\n")
    args = tune_args(study, search, 3, "--epochs", "3", "--batch-size", "16", "--pruner", "none")
    proc = start_tune(*args)
    killed = study / "trial-001"
    wait_for(lambda: (killed / "checkpoints" / "checkpoint_90.pt.sha256").exists(), proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    finished = {p: p.stat().st_mtime_ns for p in (study / "trial-000").rglob("*") if p.is_file()}
    rerun = run_app(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"re-queued to resume {killed}" in rerun.stdout
    assert f"resuming from {killed}/checkpoints/checkpoint_" in rerun.stdout
    assert f"-> {study / 'trial-000'}" not in rerun.stdout and "trial 0:" not in rerun.stdout  # not run again
    assert {p: p.stat().st_mtime_ns for p in (study / "trial-000").rglob("*") if p.is_file()} == finished
    trials = load_trials(study)
    # trial 1 (killed) is failed and re-queued as trial 2, which resumes trial-001; trial 3 is new
    assert states(trials) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    done = sorted(t.user_attrs["run_dir"] for t in trials if t.state.name == "COMPLETE")
    assert done == [str(study / f"trial-{n:03d}") for n in (0, 1, 3)]
    assert trial_dirs(study) == ["trial-000", "trial-001", "trial-003"]
    assert "completed 3/3 epochs" in run_app("logs", str(killed)).stdout


def test_sigterm_stops_the_trial_with_a_checkpoint_and_the_rerun_resumes_it(tmp_path):
    study, search = tmp_path / "study", search_file(tmp_path, "lr: {log_uniform: [1.0e-3, 1.0e-2]}\n")
    args = tune_args(study, search, 2, "--epochs", "3", "--batch-size", "16", "--pruner", "none")
    proc = start_tune(*args)
    first = study / "trial-000"
    wait_for(lambda: (first / "checkpoints" / "checkpoint_90.pt.sha256").exists(), proc, timeout=600)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in out and "run the same tune command again" in out
    rerun = run_app(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {first}/checkpoints/checkpoint_" in rerun.stdout
    trials = load_trials(study)
    assert states(trials) == ["COMPLETE", "COMPLETE", "FAIL"]  # the stopped trial, re-queued and resumed
    assert trial_dirs(study) == ["trial-000", "trial-002"]
