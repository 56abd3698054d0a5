"""Shared test helpers: run the real command in a subprocess, read runs back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"

# Small, fast settings for tests that train for real (seconds on 2 CPU cores).
FAST = ["--no-progress", "--epochs", "2", "--patience", "0"]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess: one thread each, so parallel tests do not fight for the 2 cores."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_train(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python scripts/train.py ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args], cwd=cwd, env=cli_env(**env),
        capture_output=True, text=True, timeout=timeout,
    )


def run_app(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m ignite_app.cli ARGS`` (the ``ignite-app`` console script) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "ignite_app.cli", *args], cwd=cwd, env=cli_env(**env),
        capture_output=True, text=True, timeout=timeout,
    )


def start_train(*args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """Start ``python scripts/train.py ARGS`` without waiting (for signal and kill tests)."""
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args], cwd=cwd, env=cli_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's event files, through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def torch_threads():
    """Run in-process training on one thread, restoring the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write Python source as an importable module in tmp_path (made the working directory); returns its name.

    Each call gets a fresh module name, so tests never see each other's cached imports.
    """
    import sys
    import textwrap
    import uuid

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str, stem: str = "usermod") -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)
