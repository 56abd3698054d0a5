"""--resume auto's decision, torchrun attempt isolation, broken groups and the SLURM requeue, in process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import assert_one_error_line, invoke_app
from ignite_app.cli import resolve_train_config
from ignite_app.config import Config, save_yaml
from ignite_app.errors import UserError
from ignite_app.train import elastic, requeue
from ignite_app.train.autoresume import auto_resume_dir, follow_rank_zero
from ignite_app.train.handlers import StopSignal


def saved_run(folder: Path, **values: object) -> Path:
    """A run directory as train leaves it before its first checkpoint: just config.yaml."""
    folder.mkdir(parents=True)
    save_yaml(Config(output_dir=str(folder), **values), folder / "config.yaml")  # type: ignore[arg-type]
    return folder


# --- --resume auto -------------------------------------------------------------------------------


def test_an_absent_or_empty_directory_starts_the_run(tmp_path):
    assert auto_resume_dir(Config(output_dir=str(tmp_path / "absent"))) is None
    (tmp_path / "empty").mkdir()
    assert auto_resume_dir(Config(output_dir=str(tmp_path / "empty"))) is None


def test_a_first_attempt_killed_while_writing_config_yaml_starts_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.yaml.k3j9x.tmp").write_bytes(b"dataset: dig")
    assert auto_resume_dir(Config(output_dir=str(out))) is None
    assert list(out.iterdir()) == []


def test_a_first_attempt_stopped_while_loading_its_data_starts_again(tmp_path):
    """A kill before config.yaml leaves the run-directory lock alone (with or without a temporary config.yaml)."""
    for leftovers in ([".ignite-app.lock"], [".ignite-app.lock", ".config.yaml.k3j9x.tmp"]):
        out = tmp_path / str(len(leftovers))
        out.mkdir()
        for name in leftovers:
            (out / name).write_bytes(b"")
        assert auto_resume_dir(Config(output_dir=str(out))) is None
        assert [p.name for p in out.iterdir()] == [".ignite-app.lock"]
    (tmp_path / "1" / "notes.txt").write_text("mine")  # anything else: still not a run
    with pytest.raises(UserError, match="holds files but no config.yaml"):
        auto_resume_dir(Config(output_dir=str(tmp_path / "1")))


def test_a_run_of_the_same_configuration_is_continued(tmp_path):
    run = saved_run(tmp_path / "run", lr=0.01, epochs=3)
    assert auto_resume_dir(Config(output_dir=str(run), lr=0.01, epochs=9)) == str(run)  # --epochs may change


def test_a_run_of_another_configuration_is_refused(tmp_path):
    run = saved_run(tmp_path / "run", optimizer="sgd")
    with pytest.raises(UserError, match=rf"^--resume auto: {run} holds a run of another configuration \(--optimizer 'sgd' there, "
                                        r"'adam' asked\); rerun it with its own options or choose another --output-dir$"):
        auto_resume_dir(Config(output_dir=str(run)))


def test_files_that_are_not_a_run_are_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files but no config.yaml, so it is not a run of ignite-app; choose another --output-dir$"):
        auto_resume_dir(Config(output_dir=str(tmp_path / "notes")))


def test_resume_auto_needs_an_output_dir():
    result = invoke_app("train", "--resume", "auto")
    assert_one_error_line(result.exit_code, result.stderr, result.output, "--resume auto needs --output-dir")


def test_resolving_auto_gives_a_new_run_or_the_saved_runs_config(tmp_path):
    fresh = resolve_train_config(None, {"resume": "auto", "output_dir": str(tmp_path / "new")})
    assert fresh.resume is None and fresh.output_dir == str(tmp_path / "new")
    run = saved_run(tmp_path / "run", epochs=7, time_limit=60.0)
    resumed = resolve_train_config(None, {"resume": "auto", "output_dir": str(run)}, claim=False)
    assert resumed.resume == str(run) and resumed.epochs == 7 and resumed.time_limit == 60.0  # the run's own values


def test_a_single_process_keeps_its_own_config():
    cfg = Config(output_dir="x", resume="x")
    assert follow_rank_zero(cfg) is cfg


# --- torchrun attempts and broken groups ---------------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"TORCHELASTIC_USE_AGENT_STORE": "False", "TORCHELASTIC_RESTART_COUNT": "1"}, None),  # a fresh store per attempt
    ({"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}, "ignite_app/attempt_0/"),
    ({"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2"}, "ignite_app/attempt_2/"),
])
def test_each_torchrun_attempt_on_a_shared_store_gets_its_own_keys(env, expected):
    assert elastic.attempt_prefix(env) == expected


GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:3490: "
              "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")


def test_a_collective_whose_peer_died_becomes_one_line():
    with pytest.raises(elastic.GroupBroken, match=r"^the process group broke \(Read error \[127.0.0.1\]:3490: Connection reset by peer\): "
                                                  r"another process died or hung; the run continues"):
        with elastic.report_broken_group():
            raise RuntimeError(GLOO_RESET)


def test_a_peer_that_hangs_past_the_timeout_is_a_broken_group_too():
    # gloo's words when the other rank never joined the collective (measured: a 2-process gloo group, 3 s timeout)
    hung = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                        "Timed out waiting 3000ms for recv operation to complete")
    assert elastic.is_broken_group(hung)
    assert elastic.short_reason(hung) == "Timed out waiting 3000ms for recv operation to complete"


def test_other_runtime_errors_stay_bugs():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with elastic.report_broken_group():
            raise RuntimeError("shape mismatch")


# --- --requeue-signal ----------------------------------------------------------------------------------


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A stand-in scontrol on PATH that records its arguments; its exit code is settable."""
    record, script = tmp_path / "calls", tmp_path / "bin" / "scontrol"
    script.parent.mkdir()

    def install(exit_code: int = 0) -> Path:
        script.write_text(f"#!/bin/sh\necho \"$*\" >> {record}\necho 'Requeue disabled for this job' >&2\nexit {exit_code}\n")
        script.chmod(0o755)
        return record

    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    return install


def test_the_requeue_signal_under_slurm_calls_scontrol_requeue_once(scontrol):
    record, said = scontrol(), []
    assert requeue.requeue_after_stop(Config(requeue_signal="USR1"), "SIGUSR1", said.append, environ={"SLURM_JOB_ID": "77"})
    assert record.read_text() == "requeue 77\n" and said == ["requeued SLURM job 77: it continues from this checkpoint"]


@pytest.mark.parametrize("cfg, reason, env", [
    (Config(requeue_signal="USR1"), "SIGUSR1", {}),  # not under SLURM: save and exit only
    (Config(requeue_signal="USR1"), "SIGTERM", {"SLURM_JOB_ID": "77"}),  # scancel or preemption: no requeue
    (Config(), "SIGTERM", {"SLURM_JOB_ID": "77"}),
])
def test_no_requeue_without_slurm_or_for_another_stop(scontrol, cfg, reason, env):
    record = scontrol()
    assert not requeue.requeue_after_stop(cfg, reason, print, environ=env)
    assert not record.exists()


def test_a_refused_requeue_says_how_to_continue(scontrol):
    scontrol(exit_code=1)
    warned: list[str] = []
    assert not requeue.requeue_after_stop(Config(requeue_signal="USR2"), "SIGUSR2", print, warned.append, environ={"SLURM_JOB_ID": "9"})
    assert warned == ["scontrol requeue 9 failed (Requeue disabled for this job); "
                      "submit the job again with the same command: --resume auto continues the run"]


def test_stop_exit_codes():
    assert [requeue.stop_exit_code(r) for r in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "time-limit")] == [143, 130, 138, 140, 0]


def test_stop_signal_takes_the_requeue_signal_and_gives_it_back():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopSignal(requeue_signal=requeue.requeue_signal_number(Config(requeue_signal="USR1")))
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.reason() == "SIGUSR1"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_an_unknown_requeue_signal_is_one_error_line():
    result = invoke_app("train", "--requeue-signal", "KILL")
    assert_one_error_line(result.exit_code, result.stderr, result.output, "'KILL' is not one of 'USR1', 'USR2'")
    with pytest.raises(UserError, match=r"^invalid --requeue-signal 'HUP': choose one of USR1, USR2$"):
        Config(requeue_signal="HUP")
