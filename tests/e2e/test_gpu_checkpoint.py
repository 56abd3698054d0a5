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


def test_a_gpu_run_from_before_stored_preprocessing_is_refused_on_resume_and_left_as_it_was(tmp_path):
    """The fixture was trained on an H200 before preprocessing was stored with the model (issue 11): its
    regression targets were not standardised, so continuing it would train on differently prepared data.
    The resume says so in one line and changes nothing; a CPU resume of a CUDA-saved checkpoint of today's
    layout is covered by tests/e2e/test_resume.py (test_resume_at_an_epoch_boundary_from_a_checkpoint_saved_on_cuda).
    Regenerate this fixture with scripts/gpu_check.sh on a GPU to cover it with a real GPU run again."""
    run_dir = copy_fixture(tmp_path)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    result = run_train("--resume", str(run_dir), "--epochs", "2", "--device", "cpu", "--no-progress")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "written before preprocessing was stored with the model" in lines[0]
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()} == before


def test_a_gpu_checkpoint_evaluates_on_the_cpu(tmp_path):
    run_dir = copy_fixture(tmp_path)
    result = run_app("evaluate", str(run_dir / "checkpoints" / "checkpoint_25.pt"), "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"loss", "mae"} and 0 < metrics["mae"] < 2
