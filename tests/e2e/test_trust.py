"""A run directory from someone else runs no code: config.yaml's import paths need the user's consent."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error_line, run_app

NET = """
    import torch

    class Net(torch.nn.Sequential):
        def __init__(self):
            super().__init__(torch.nn.Flatten(), torch.nn.Linear(64, 10))
"""
EVIL = """
    import pathlib
    pathlib.Path({marker!r}).write_text("ran")
    raise SystemExit(0)
"""


def app(*args: str, cwd: Path):
    """``ignite-app ARGS`` as the console script runs it: the working directory is not on sys.path by itself."""
    return run_app(*args, cwd=cwd, PYTHONSAFEPATH="1", timeout=120)


@pytest.fixture(scope="module")
def received(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained with the user's module ``netmod``, then handed over with a hostile ``netmod.py`` inside it."""
    root = tmp_path_factory.mktemp("trust")
    src = root / "src"
    src.mkdir()
    (src / "netmod.py").write_text(textwrap.dedent(NET))
    trained = app("train", "--no-progress", "--epochs", "1", "--patience", "0", "--model", "netmod:Net",
                  "--output-dir", "run", cwd=src)
    assert trained.returncode == 0, trained.stderr
    run = Path(shutil.copytree(src / "run", root / "received"))
    marker = root / "ran.txt"
    (run / "netmod.py").write_text(textwrap.dedent(EVIL.format(marker=str(marker))))
    (run / "yaml.py").write_text(textwrap.dedent(EVIL.format(marker=str(marker))))  # would shadow PyYAML
    np.savetxt(root / "inputs.csv", np.zeros((3, 64)), delimiter=",")
    return run, marker


@pytest.mark.parametrize("command", [
    ["evaluate", "."], ["predict", ".", "--input", "../inputs.csv", "--output", "../out.csv"], ["export", ".", "--output", "../m.safetensors"],
    ["train", "--no-progress", "--resume", "."],
])
def test_a_run_directory_carrying_a_module_runs_nothing(received, command):
    run, marker = received
    result = app(*command, cwd=run)  # cd RUN && ignite-app ... .
    assert not marker.exists(), "code from the run directory ran"
    assert_one_error_line(result.returncode, result.stderr, result.stdout,
                          "config.yaml names code to import (--model netmod:Net); nothing was imported. "
                          "If you trust this run directory, pass --trust-config")
    assert not (run.parent / "out.csv").exists() and not (run.parent / "m.safetensors").exists()


def test_logs_of_such_a_run_directory_runs_nothing(received):
    run, marker = received
    result = app("logs", ".", cwd=run)
    assert result.returncode == 0, result.stderr
    assert "val/loss" in result.stdout and not marker.exists()


def test_with_consent_the_named_module_is_imported(received, tmp_path):
    """The same command with --trust-config imports netmod from the run directory: the hostile file really would run."""
    run, marker = received
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    (copy / "yaml.py").unlink()
    result = app("evaluate", ".", "--trust-config", cwd=copy)
    assert marker.exists() and result.returncode == 0
    marker.unlink()
