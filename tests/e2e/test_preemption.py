"""Preemptible at scale: one command line that a launcher reruns until the run is done.

Every interrupted run here is finished by rerunning the *same* command (``--resume auto``), by
torchrun's elastic restarts, or by a SLURM requeue, and must end with the final checkpoint's
model and optimizer tensors ``torch.equal`` to those of a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TRAIN_SCRIPT, cli_env, run_torchrun, run_train, start_train, torchrun_command, wait_for
from ignite_app.io.checkpoint import read_checkpoint

EPOCH_ONE = 90  # iterations per epoch of one process: 1438 digits in batches of 16
EPOCH_TWO = 45  # ... of two processes with 16 each


@pytest.fixture(scope="module")
def digits(digits_npz) -> Path:
    """The suite's digits NPZ (conftest), under this module's name for it."""
    return digits_npz


def command(digits: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    """The one command line of a run: the MLP with dropout, shuffled batches of 16, ``--resume auto``."""
    return ["--device", "cpu", "--no-progress", "--dataset", f"npz:{digits}", "--model", "mlp", "--batch-size", "16",
            "--patience", "0", "--epochs", str(epochs), "--resume", "auto", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def reference_one(digits, tmp_path_factory) -> Path:
    """An uninterrupted 5-epoch run in one process."""
    out = tmp_path_factory.mktemp("reference_one") / "run"
    result = run_train(*command(digits, out, 5))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def reference_two(digits, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run of two processes under torchrun."""
    out = tmp_path_factory.mktemp("reference_two") / "run"
    result = run_torchrun(*command(digits, out, 3))
    assert result.returncode == 0, result.stderr
    return out


def final_state(run: Path, iteration: int) -> dict[str, Any]:
    """The checkpoint a run ends with, read safely (``weights_only``)."""
    return read_checkpoint(run / "checkpoints" / f"checkpoint_{iteration}.pt")


def assert_same_weights(run: Path, reference: Path, iteration: int) -> None:
    """Every model and optimizer tensor of the final checkpoints is ``torch.equal``."""
    got, want = final_state(run, iteration), final_state(reference, iteration)
    assert got["trainer"]["iteration"] == want["trainer"]["iteration"] == iteration
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"model.{name} differs"
    for pid, slots in want["optimizer"]["state"].items():
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][pid][key]), torch.as_tensor(value)), f"optimizer {pid}.{key}"


def newest_iteration(run: Path) -> int:
    """The iteration of the newest checkpoint whose save finished (its sidecar exists), 0 if none."""
    done = [int(p.name.split("_")[1].split(".")[0]) for p in (run / "checkpoints").glob("checkpoint_*.pt.sha256")]
    return max(done, default=0)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """RANK -> pid of each worker that a torchrun agent started (Linux /proc)."""
    children = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()
    found = {}
    for pid in children:
        env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(pid)
    return found


# --- one process: the same command line, again and again ------------------------------------------


def test_the_same_command_starts_the_run_then_three_reruns_after_kills_end_equal(digits, reference_one, tmp_path):
    out, rng = tmp_path / "run", random.Random(17)
    outputs = []
    for attempt in range(3):
        before = newest_iteration(out) if out.exists() else 0
        # Slowed saves (0.3 s each, the same results) keep a loaded machine from finishing all 5 epochs before the kill.
        proc = start_train(*command(digits, out, 5), TEST_FAULT="slow-save:0.3")
        wait_for(lambda: out.exists() and newest_iteration(out) > before, proc)
        time.sleep(rng.uniform(0, 0.15))  # somewhere in the next epoch, or inside its save
        proc.kill()
        outputs.append(proc.communicate()[0])
    last = run_train(*command(digits, out, 5))
    assert last.returncode == 0, last.stderr
    assert "resuming from" not in outputs[0] and "writing to" in outputs[0]  # the first attempt started the run
    for text in outputs[1:] + [last.stdout]:
        assert re.search(r"resuming from \S+checkpoint_\d+\.pt \(iteration [1-9]\d*\)", text), text
    assert "done: 5 epoch(s)" in last.stdout
    assert_same_weights(out, reference_one, 5 * EPOCH_ONE)
    again = run_train(*command(digits, out, 5))  # a launcher that reruns a finished run: nothing to do, exit 0
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


def test_resume_auto_refuses_a_directory_holding_another_configurations_run(digits, reference_one, tmp_path):
    before = {p: p.read_bytes() for p in reference_one.rglob("*") if p.is_file()}
    result = run_train(*command(digits, reference_one, 5, "--lr", "0.01"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"Error: --resume auto: {reference_one} holds a run of another configuration (--lr 0.001 there, "
                        "0.01 asked); rerun it with its own options or choose another --output-dir")
    assert {p: p.read_bytes() for p in reference_one.rglob("*") if p.is_file()} == before  # nothing on disk changed


def test_the_requeue_signal_without_slurm_saves_and_exits_like_sigterm(digits, reference_one, tmp_path):
    out, bin_dir, record = tmp_path / "run", tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    stand_in = bin_dir / "scontrol"
    stand_in.write_text(f"#!/bin/sh\necho \"$*\" >> {record}\n")
    stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = start_train(*command(digits, out, 5, "--requeue-signal", "USR1"), **env)
    wait_for(lambda: out.exists() and newest_iteration(out) >= EPOCH_ONE, proc)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr
    stopped = int(re.search(r"stopped by SIGUSR1 at iteration (\d+)", stdout).group(1))
    assert newest_iteration(out) == stopped and not record.exists()  # saved; no SLURM job, so no scontrol
    finished = run_train(*command(digits, out, 5, "--requeue-signal", "USR1"))
    assert finished.returncode == 0 and f"(iteration {stopped})" in finished.stdout, finished.stderr
    assert_same_weights(out, reference_one, 5 * EPOCH_ONE)


# --- torchrun: elastic restarts and two nodes -------------------------------------------------------


def test_torchrun_restarts_after_a_worker_is_killed_and_ends_equal(digits, reference_two, tmp_path):
    out, rng = tmp_path / "run", random.Random()
    launcher = torchrun_command(*command(digits, out, 3), nproc=2)
    launcher.insert(launcher.index("--standalone") + 1, "--max-restarts=2")
    proc = subprocess.Popen(launcher, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and newest_iteration(out) >= EPOCH_TWO, proc)
    time.sleep(rng.uniform(0, 0.15))  # a random moment of epoch 2 (~0.2 s here; up to 0.5 s sometimes missed the run)
    victim = rng.choice([0, 1])
    os.kill(worker_pids(proc.pid)[victim], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert re.search(r"resuming from \S+checkpoint_\d+\.pt \(iteration [1-9]\d*\)", stdout), stdout  # the restart continued
    assert "done: 3 epoch(s)" in stdout
    # The survivor leaves in one line, and no worker printed a traceback ([rankN]: lines).
    survivor = "Error: " if victim == 1 else "Error (rank 1): "
    errors = [line for line in stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(survivor + "the process group broke ("), stderr
    assert errors[0].endswith("the run continues from its newest checkpoint when the job is restarted with --resume auto")
    assert "[rank" not in stderr and "Traceback" not in stderr, stderr
    assert_same_weights(out, reference_two, 3 * EPOCH_TWO)


def two_agents(args: list[str], port: int) -> list[subprocess.Popen]:
    """Two torchrun agents of one process each, meeting at a c10d rendezvous on 127.0.0.1: two nodes on loopback."""
    agents = []
    for _ in range(2):
        launcher = torchrun_command(*args, nproc=1)
        at = launcher.index("--standalone")
        launcher[at] = "--nnodes=2"
        at += 1
        launcher[at:at] = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=ignite-app-test"]
        agents.append(subprocess.Popen(launcher, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return agents


def finish_all(agents: list[subprocess.Popen]) -> tuple[list[int], str, str]:
    """Wait for every agent; their exit codes and their stdout and stderr joined."""
    outputs = [agent.communicate(timeout=300) for agent in agents]
    return [a.returncode for a in agents], "".join(o for o, _ in outputs), "".join(e for _, e in outputs)


def test_two_nodes_on_loopback_train_then_resume_as_two_nodes(digits, reference_two, tmp_path):
    out = tmp_path / "run"
    codes, stdout, stderr = finish_all(two_agents(command(digits, out, 2), free_port()))
    assert codes == [0, 0], stderr
    assert "global batch 32, processes 2" in stdout and "done: 2 epoch(s)" in stdout
    codes, stdout, stderr = finish_all(two_agents(command(digits, out, 3), free_port()))
    assert codes == [0, 0], stderr
    assert f"(iteration {2 * EPOCH_TWO})" in stdout and "processes 2" in stdout and "done: 3 epoch(s)" in stdout
    assert_same_weights(out, reference_two, 3 * EPOCH_TWO)


# --- SLURM: the warning signal, a checkpoint, then scontrol requeue -----------------------------------

SCONTROL = """#!/bin/sh
# Stand-in for SLURM's scontrol: records who called it, with what, and which checkpoints were on disk.
echo "rank=$SLURM_PROCID args=$* checkpoints=$(ls {checkpoints} | tr '\\n' ' ')" >> {record}
"""


def slurm_tasks(args: list[str], bin_dir: Path, restart: int) -> list[subprocess.Popen]:
    """Two tasks of one SLURM job step on this node, with the environment srun gives them."""
    port, tasks = free_port(), []
    for rank in range(2):
        env = cli_env(
            PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
            SLURM_RESTART_COUNT=str(restart), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )
        tasks.append(subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return tasks


def test_slurm_warning_signal_saves_then_rank_zero_requeues_once_and_the_requeued_job_continues(digits, reference_two, tmp_path):
    out, bin_dir, record = tmp_path / "run", tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(SCONTROL.format(checkpoints=out / "checkpoints", record=record))
    (bin_dir / "scontrol").chmod(0o755)
    args = command(digits, out, 3, "--requeue-signal", "USR1")
    tasks = slurm_tasks(args, bin_dir, restart=0)
    wait_for(lambda: out.exists() and newest_iteration(out) >= EPOCH_TWO, tasks[0])
    tasks[1].send_signal(signal.SIGUSR1)  # rank 1 alone: the ranks agree on the stop, rank 0 requeues
    codes, stdout, stderr = finish_all(tasks)
    assert codes == [128 + signal.SIGUSR1] * 2, stderr
    stopped = int(re.search(r"stopped by SIGUSR1 at iteration (\d+)", stdout).group(1))
    assert "requeued SLURM job 4242" in stdout
    calls = record.read_text().splitlines()
    assert len(calls) == 1, calls  # once, by rank 0, when the stop's checkpoint and its checksum were on disk
    assert calls[0].startswith("rank=0 args=requeue 4242 checkpoints=")
    assert {f"checkpoint_{stopped}.pt", f"checkpoint_{stopped}.pt.sha256"} <= set(calls[0].split("checkpoints=")[1].split())
    codes, stdout, stderr = finish_all(slurm_tasks(args, bin_dir, restart=1))  # the requeued job: the same command
    assert codes == [0, 0], stderr
    assert f"(iteration {stopped})" in stdout and "done: 3 epoch(s)" in stdout
    assert len(record.read_text().splitlines()) == 1  # a run that ends normally never requeues
    assert_same_weights(out, reference_two, 3 * EPOCH_TWO)
