"""Training under torchrun: real 2-process gloo jobs on the CPU, and the launch decisions in isolation.

One trained 2-process run is shared by the module (``two_process_run``); each process starts
in its own empty working directory, so anything rank 1 wrote would show up in ``rank1/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ignite import distributed as idist

from conftest import TRAIN_SCRIPT, cli_env, read_scalars, run_torchrun, start_torchrun, torchrun_command
from ignite_app.train import build as run, distributed, launch
from ignite_app.io.checkpoint import read_checkpoint
from ignite_app.cli import train_command
from ignite_app.config import Config
from ignite_app.data.sources import load_splits
from ignite_app.train.engines import build_evaluator
from ignite_app.errors import UserError
from ignite_app.data.loaders import EpochSampler, make_loader
from ignite_app.models import build_model

# digits: 1438 training samples, 719 per process; --batch-size 16 -> 45 iterations per epoch
SETTINGS = ["--device", "cpu", "--no-progress", "--epochs", "2", "--patience", "0", "--batch-size", "16"]
EPOCH = 45
PER_RANK_CWD = f"""
import os, runpy, sys
os.chdir("rank" + os.environ["RANK"])
sys.argv[0] = {str(TRAIN_SCRIPT)!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A finished 2-process run with the default output directory; (result, run_dir, rank 1's cwd)."""
    base = tmp_path_factory.mktemp("two_process")
    (base / "rank0").mkdir()
    (base / "rank1").mkdir()
    (base / "per_rank_cwd.py").write_text(PER_RANK_CWD)
    result = subprocess.run(torchrun_command(*SETTINGS, script=base / "per_rank_cwd.py"), cwd=base, env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    runs = sorted((base / "rank0" / "runs").glob("digits-*"))
    return result, (runs[0] if len(runs) == 1 else None), base / "rank1"


def files_under(root: Path) -> list[str]:
    """Every file below ``root``, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def checkpoint_iterations(run_dir: Path) -> list[int]:
    """Iterations of the resumable checkpoints in a run, ascending."""
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("checkpoint_*.pt"))


# --- the shared 2-process run ------------------------------------------------------------------

def test_two_processes_train_one_run_written_by_rank_zero_only(two_process_run):
    result, run_dir, rank1_cwd = two_process_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert "batch 16 per process, global batch 32, processes 2" in result.stdout
    assert result.stdout.count("epoch   1/2") == 1 and result.stdout.count("done: 2 epoch(s)") == 1  # rank 0 prints
    assert run_dir is not None, "rank 0 must create exactly one default run directory"
    assert files_under(rank1_cwd) == []  # rank 1 never created a directory, config, checkpoint or event file
    files = files_under(run_dir)
    assert len([f for f in files if f.startswith("events.out.tfevents.")]) == 1
    assert "config.yaml" in files
    saved = [f for f in files if f.startswith("checkpoints/")]
    best = [f for f in saved if f.startswith("checkpoints/best_model_")]
    assert sorted(set(saved) - set(best)) == [f"checkpoints/checkpoint_{i}.pt{s}" for i in (EPOCH, 2 * EPOCH) for s in ("", ".sha256")]
    assert len(best) == 2 and not any(Path(f).name.startswith(".") for f in files)  # one best model + sidecar, no temporaries
    state = torch.load(run_dir / "checkpoints" / f"checkpoint_{2 * EPOCH}.pt", weights_only=True, map_location="cpu")
    assert (state["meta"]["world_size"], state["meta"]["batch_size"]) == (2, 16)
    assert not any(key.startswith("module.") for key in state["model"])


def test_validation_metrics_equal_a_single_process_evaluation_of_the_checkpoint(two_process_run, torch_threads):
    run_dir = two_process_run[1]
    splits = load_splits(Config())
    model = build_model("auto", splits.spec)
    model.load_state_dict(read_checkpoint(run_dir / "checkpoints" / f"checkpoint_{2 * EPOCH}.pt")["model"])  # strict: no module. prefix
    cpu = torch.device("cpu")
    loader = make_loader(splits.val, 64, EpochSampler(len(splits.val), 0, shuffle=False), in_memory=True, num_workers=0, device=cpu, seed=0)
    evaluator = build_evaluator(model, splits.spec.task, cpu)
    evaluator.run(loader)
    logged = read_scalars(run_dir)
    for name in ("loss", "accuracy"):
        step, value = logged[f"val/{name}"][-1]
        assert step == 2 * EPOCH
        assert evaluator.state.metrics[name] == pytest.approx(value, abs=1e-6)


def test_its_checkpoint_resumes_in_one_process_with_the_same_global_batch(two_process_run, tmp_path, torch_threads):
    copy = shutil.copytree(two_process_run[1], tmp_path / "run")
    checkpoint = copy / "checkpoints" / f"checkpoint_{2 * EPOCH}.pt"
    refused = CliRunner().invoke(train_command, ["--resume", str(checkpoint), "--epochs", "3"])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"Error: --batch-size cannot change when resuming: {checkpoint} was trained with a global batch of 32 "
        "(2 process(es) x 16), this run would use 16 (1 x 16); resume with --batch-size 32"
    )
    resumed = CliRunner().invoke(train_command, ["--resume", str(checkpoint), "--epochs", "3", "--batch-size", "32"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoint} (iteration {2 * EPOCH})" in resumed.stdout and "processes 1" in resumed.stdout
    assert checkpoint_iterations(copy)[-1] == 3 * EPOCH  # same iterations per epoch: 1438 / 32
    assert [s for s, _ in read_scalars(copy)["val/loss"]] == [EPOCH, 2 * EPOCH, 3 * EPOCH]


# --- SIGTERM and resume with two processes -----------------------------------------------------

def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read stdout lines until one contains ``text``; returns the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never appeared: {lines}")


def test_sigterm_to_torchrun_stops_every_rank_at_one_iteration_and_the_resume_matches(two_process_run, tmp_path):
    out = tmp_path / "run"
    proc = start_torchrun(*SETTINGS, "--output-dir", str(out))
    lines = wait_for_line(proc, "epoch   1/2")
    time.sleep(0.2)  # most often mid-epoch 2 (either way the stop must be clean and resumable)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    stdout, stderr = proc.communicate(timeout=120)
    stdout = "".join(lines) + stdout
    assert proc.returncode == 1  # torchrun's own exit code after it was signalled (documented)
    stops = re.findall(r"stopped by SIGTERM at iteration (\d+) \(epoch [12]\)", stdout)
    assert len(stops) == 1, stdout + stderr  # rank 0 reports, once
    stopped_at = int(stops[0])
    assert EPOCH <= stopped_at < 2 * EPOCH and checkpoint_iterations(out)[-1] == stopped_at
    assert "[rank" not in stderr and "Error" not in stderr, stderr  # no rank hit a broken collective

    resumed = run_torchrun("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"(iteration {stopped_at})" in resumed.stdout and "done: 2 epoch(s)" in resumed.stdout
    # Same batches, per-rank RNG (dropout) and partial loss sums restored: the same run as without the stop.
    final = read_checkpoint(out / "checkpoints" / f"checkpoint_{2 * EPOCH}.pt")
    reference = read_checkpoint(two_process_run[1] / "checkpoints" / f"checkpoint_{2 * EPOCH}.pt")
    for name, tensor in reference["model"].items():
        assert torch.allclose(final["model"][name], tensor, atol=1e-6), name
    assert read_scalars(out)["val/loss"][-1][1] == pytest.approx(read_scalars(two_process_run[1])["val/loss"][-1][1], abs=1e-6)


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of one torchrun worker, found by the RANK in its environment (Linux /proc)."""
    children = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def test_sigterm_to_one_worker_stops_both_and_each_exits_143(tmp_path):
    proc = start_torchrun(*SETTINGS, "--output-dir", str(tmp_path / "run"))
    wait_for_line(proc, "epoch   1/2")
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "stopped by SIGTERM at iteration" in stdout  # rank 0 was not signalled itself: the stop was agreed
    assert proc.returncode == 1  # torchrun reports any non-zero worker as a failure ...
    assert len(re.findall(r"exitcode\s+: 143 ", stderr)) == 2, stderr  # ... and lists each rank's 143
    assert "[rank" not in stderr, stderr  # no worker raised (a rank left alone in a collective would)


# --- gradients averaged across processes -------------------------------------------------------

TINY_MODEL = """
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)
"""


def test_two_processes_with_half_the_batch_track_one_process_with_the_whole_batch(user_module, tmp_path, torch_threads):
    name = user_module(TINY_MODEL, stem="tiny")
    common = ["--model", f"{name}:Tiny", "--device", "cpu", "--no-progress", "--epochs", "2", "--patience", "0"]
    two = run_torchrun(*common, "--batch-size", "32", "--output-dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    one = CliRunner().invoke(train_command, [*common, "--batch-size", "64", "--output-dir", "one"])
    assert one.exit_code == 0, one.output
    a, b = read_scalars(tmp_path / "one"), read_scalars(tmp_path / "two")
    for tag in ("val/loss", "val/accuracy"):
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]] == [23, 46]
        for (_, x), (_, y) in zip(a[tag], b[tag]):
            assert x == pytest.approx(y, abs=1e-6)  # measured: 2.4e-7
    final_one = read_checkpoint(tmp_path / "one" / "checkpoints" / "checkpoint_46.pt")["model"]
    final_two = read_checkpoint(tmp_path / "two" / "checkpoints" / "checkpoint_46.pt")["model"]
    assert max((final_one[k] - final_two[k]).abs().max().item() for k in final_one) < 1e-6  # measured: 3e-8


# --- errors: one report, no hang -------------------------------------------------------------

RANK1_ONLY_DATA = """
import os
import torch
from torch.utils.data import TensorDataset

def get_dataset(train):
    if os.environ.get("RANK") == "1":
        raise FileNotFoundError("shard missing on this node")
    return TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
"""


def test_a_failure_on_one_rank_ends_every_rank_with_one_report(user_module, tmp_path):
    name = user_module(RANK1_ONLY_DATA, stem="rank1data")
    result = run_torchrun("--dataset", f"{name}:get_dataset", *SETTINGS, "--output-dir", "run", cwd=tmp_path)
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("Error"))
    assert errors == [
        f"Error (rank 1): --dataset {name}:get_dataset(train=True) failed: FileNotFoundError: shard missing on this node",
        "Error: process 1 of 2 failed (its error is above); no process continued",
    ], result.stderr
    assert result.returncode == 1 and len(re.findall(r"exitcode\s+: 2 ", result.stderr)) == 2
    assert not (tmp_path / "run").exists()


def test_a_refused_output_dir_is_reported_once(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = run_torchrun(*SETTINGS, "--output-dir", "taken", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: taken already holds files; continue that run with --resume taken, or choose another --output-dir"]
    assert files_under(tmp_path / "taken") == ["notes.txt"]


# --- launch decisions, without a launcher ------------------------------------------------------

LAUNCH_ENV = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", launch.TIMEOUT_ENV)


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables, whatever the test runner has."""
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "1"}, True),  # torchrun --nproc_per_node=1 still joins a group (nccl check)
        ({"WORLD_SIZE": "4"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, True),  # srun -n 4
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False),  # the batch script itself, not a srun step
    ],
)
def test_launcher_detection(clean_env, env, expected):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert launch.launched_distributed() is expected


@pytest.mark.parametrize(
    "device, backend, cuda, expected",
    [("auto", None, True, "nccl"), ("cuda", None, True, "nccl"), ("cuda:1", None, True, "nccl"), ("auto", None, False, "gloo"),
     ("cpu", None, True, "gloo"), ("mps", None, True, "gloo"), ("cuda", "gloo", True, "gloo")],
)
def test_backend_follows_the_device_unless_given(device, backend, cuda, expected):
    assert launch.default_backend(Config(device=device, backend=backend), cuda_available=cuda) == expected


@pytest.mark.parametrize("device, cuda, why", [("auto", False, "this machine has no CUDA GPU"), ("cpu", True, "--device is cpu")])
def test_nccl_without_cuda_is_refused(device, cuda, why):
    with pytest.raises(UserError, match=rf"^--backend nccl needs CUDA GPUs \({why}\); use --backend gloo or --device cuda$"):
        launch.default_backend(Config(device=device, backend="nccl"), cuda_available=cuda)


@pytest.fixture
def two_gpu_rank(monkeypatch):
    """Pretend to be local rank 1 of a process group on a node with two GPUs; records set_device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    bound: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    monkeypatch.setattr(run, "in_process_group", lambda: True)
    monkeypatch.setattr(idist, "get_local_rank", lambda: 1)
    return bound


@pytest.mark.parametrize("spec", ["cuda", "auto", "cuda:1"])
def test_each_process_binds_the_gpu_of_its_local_rank(two_gpu_rank, spec):
    assert run.pick_device(Config(device=spec)) == torch.device("cuda", 1)
    assert two_gpu_rank == [torch.device("cuda", 1)]


def test_an_explicit_gpu_that_is_not_the_local_rank_is_refused(two_gpu_rank):
    with pytest.raises(UserError, match=r"^--device cuda:0: under torchrun or srun each process uses the GPU of its local rank "
                                        r"\(this is local rank 1\); pass --device cuda$"):
        run.pick_device(Config(device="cuda:0"))


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(UserError, match=r"^local rank 2 has no GPU: this node has 2 CUDA device\(s\); start at most that many"):
        distributed.local_device(torch.device("cuda", 0), "cuda", local_rank=2, gpu_count=2)


def test_cpu_processes_stay_on_the_cpu():
    assert distributed.local_device(torch.device("cpu"), "cpu", local_rank=1, gpu_count=2) == torch.device("cpu")


def test_torchrun_on_gpus_initialises_nccl_with_the_collective_timeout(clean_env, monkeypatch):
    clean_env.setenv("TORCHELASTIC_RUN_ID", "x")
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv(launch.TIMEOUT_ENV, "42")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []

    def initialize(backend, **kwargs):
        calls.append((backend, kwargs))
        raise KeyboardInterrupt  # stop here: nothing below is under test

    monkeypatch.setattr(idist, "initialize", initialize)
    with pytest.raises(KeyboardInterrupt):
        launch.launch(lambda: Config(device="cuda", output_dir="unused"), lambda cfg: cfg)
    assert calls == [("nccl", {"timeout": timedelta(seconds=42)})]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf"])
def test_a_bad_collective_timeout_is_refused(clean_env, value):
    clean_env.setenv(launch.TIMEOUT_ENV, value)
    with pytest.raises(UserError, match=rf"^invalid IGNITE_APP_DIST_TIMEOUT='{value}': expected a number of seconds > 0"):
        launch.collective_timeout()


def test_the_default_collective_timeout_is_ten_minutes(clean_env):
    assert launch.collective_timeout() == timedelta(minutes=10)
