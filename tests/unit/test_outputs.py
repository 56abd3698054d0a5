"""Never overwrite what the user did not name as output: inputs, training checkpoints, existing files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error_line, invoke_app, train_tiny_run
from ignite_app.io import checkpoint as ckpt


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-epoch MLP run on digits."""
    return train_tiny_run(tmp_path_factory.mktemp("outputs") / "run", "--model", "mlp")


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_refuses_to_write_over_its_input(run, tmp_path):
    inputs = tmp_path / "x.csv"
    np.savetxt(inputs, np.zeros((3, 64)), delimiter=",")
    before = inputs.read_bytes()
    result = invoke_app("predict", str(run), "--input", str(inputs), "--output", str(inputs), "--overwrite")
    assert_one_error_line(result.exit_code, result.stderr, result.output, f"--output {inputs} is also an input of this command")
    assert inputs.read_bytes() == before


@pytest.mark.parametrize("command", [
    ["export", "{ckpt}", "--output", "{ckpt}", "--format", "torchscript"],
    ["export", "{ckpt}", "--output", "{other}", "--format", "torchscript", "--overwrite"],
    ["export", "{ckpt}", "--output", "{new}"],
])
def test_export_never_writes_into_checkpoints(run, command):
    newest = ckpt.train_checkpoints(run)[0]
    names = {"ckpt": str(newest), "other": str(ckpt.train_checkpoints(run)[1]),
             "new": str(run / ckpt.CHECKPOINT_DIR / "model.safetensors")}
    before = digests(run)
    result = invoke_app(*[a.format(**names) for a in command])
    line = assert_one_error_line(result.exit_code, result.stderr, result.output)
    assert "is also an input" in line or "inside a run's checkpoints/ folder" in line
    assert digests(run) == before


def test_existing_outputs_need_overwrite(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "x.csv"
    np.savetxt(inputs, np.zeros((3, 64)), delimiter=",")
    mine = b"my own file"
    for name, command in [
        ("out.csv", ["predict", str(run), "--input", str(inputs), "--output", "out.csv"]),
        ("scalars.csv", ["logs", str(run), "--csv", "scalars.csv"]),
        ("m.safetensors", ["export", str(run), "--output", "m.safetensors"]),
        (ckpt.best_checkpoint(run).stem + ".safetensors", ["export", str(run)]),  # the default name
    ]:
        (tmp_path / name).write_bytes(mine)
        refused = invoke_app(*command)
        assert_one_error_line(refused.exit_code, refused.stderr, refused.output,
                              f"{name} already exists; pass --overwrite to replace it, or choose another file")
        assert (tmp_path / name).read_bytes() == mine
        replaced = invoke_app(*command, "--overwrite")
        assert replaced.exit_code == 0, replaced.output + replaced.stderr
        assert (tmp_path / name).read_bytes() != mine
