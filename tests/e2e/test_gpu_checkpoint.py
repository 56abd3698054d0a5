"""A run that was trained on a real GPU (an NVIDIA H200, by scripts/gpu_check.sh) continues on this CPU machine.

The fixture under tests/fixtures/cuda_run is that run's config.yaml and checkpoint, as written there:
its device is cuda:0 and its RNG state holds the GPU's generator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from conftest import run_app, run_train

FIXTURE = Path(__file__).parents[1] / "fixtures" / "cuda_run"


def copy_fixture(tmp_path: Path) -> Path:
    """The GPU run, copied so that resuming it writes nothing into the repository."""
    run_dir = tmp_path / "cuda_run"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def test_the_gpu_checkpoint_records_a_gpu_run_and_loads_weights_only():
    state = torch.load(FIXTURE / "checkpoints" / "checkpoint_25.pt", weights_only=True, map_location="cpu")
    assert len(state["rng"]["cuda"]) == 1  # the H200's generator state
    assert state["trainer"]["iteration"] == 25
    assert "device: cuda:0" in (FIXTURE / "config.yaml").read_text()


def test_a_gpu_run_resumes_on_this_cpu_only_machine(tmp_path):
    run_dir = copy_fixture(tmp_path)
    result = run_train("--resume", str(run_dir), "--epochs", "2", "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "epoch   2/2" in result.stdout
    state = torch.load(run_dir / "checkpoints" / "checkpoint_50.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 50
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_a_gpu_checkpoint_evaluates_on_the_cpu(tmp_path):
    run_dir = copy_fixture(tmp_path)
    result = run_app("evaluate", str(run_dir / "checkpoints" / "checkpoint_25.pt"), "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"loss", "mae"} and 0 < metrics["mae"] < 2
