"""``ignite-app export`` on a run this module trains: every format loads back and computes the same outputs.

The reference is the best model rebuilt by hand from its checkpoint (``torch.load(weights_only=True)``).
ONNX files are checked with ``onnx.checker`` and run with ONNX's own reference evaluator
(onnxruntime is not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from conftest import assert_one_error_line, invoke_app, run_app, train_tiny_run
from ignite_app.config import Config
from ignite_app.data.sources import DataSpec
from ignite_app.errors import UserError
from ignite_app.tools.export import onnx_bytes, torchscript_bytes
from ignite_app.tools.inference import Trained
from ignite_app.models import build_model

DIGITS = DataSpec("classification", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    """The suite's shared run: 2 epochs of the default CNN on digits (read only)."""
    return tiny_run


@pytest.fixture(scope="module")
def reference(run_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 5 inputs and the best model's outputs for them, computed from the checkpoint by hand."""
    [best] = (run_dir / "checkpoints").glob("best_model_*.pt")
    model = build_model("cnn", DIGITS)
    model.load_state_dict(torch.load(best, weights_only=True, map_location="cpu")["model"])
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, model.eval()(x)


def export(run_dir: Path, *args: str) -> None:
    """Run ``ignite-app export RUN_DIR ARGS`` and require success."""
    result = invoke_app("export", str(run_dir), *args)
    assert result.exit_code == 0, result.stderr


def test_safetensors_loads_into_a_fresh_model_with_identical_outputs(run_dir, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export(run_dir)  # safetensors is the default format; the file is named after the checkpoint
    [path] = tmp_path.glob("best_model_*.safetensors")
    fresh = build_model("cnn", DIGITS)
    fresh.load_state_dict(load_file(path), strict=True)
    x, expected = reference
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert (meta["task"], meta["input_shape"], meta["num_outputs"], meta["model"]) == ("classification", "[1, 8, 8]", "10", "auto")
    steps = json.loads(meta["preprocessing"])  # the weights take x / 16: the metadata says so
    assert (steps["shift"], steps["scale"], steps["classes"]) == (0.0, 16.0, [str(k) for k in range(10)])


def test_torchscript_round_trip(run_dir, reference, tmp_path):
    export(run_dir, "--format", "torchscript", "--output", str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    x, expected = reference
    with torch.no_grad():
        assert torch.equal(loaded(16 * x), expected)  # raw pixels 0..16 in: the stored /16 is part of the export


def test_onnx_is_valid_and_computes_the_same_outputs(run_dir, reference, tmp_path):
    export(run_dir, "--format", "onnx", "--output", str(tmp_path / "model.onnx"))
    model = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    x, expected = reference  # batch 5, exported with batch 2: the batch dimension is dynamic
    [out] = ReferenceEvaluator(model).run(None, {"input": 16 * x.numpy()})  # raw pixels: the export divides by 16
    assert np.allclose(out, expected.numpy(), atol=1e-5)


class Unexportable(nn.Module):
    """TorchScript refuses ``*extra``; ONNX opset 17 has no FFT."""

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x.flatten(1)).abs()[:, :10]


def test_a_model_that_cannot_be_exported_gets_a_clear_error():
    trained = Trained(Path("run"), Path("run/checkpoints/best_model_1.pt"), Config(), DIGITS, Unexportable(), torch.device("cpu"))
    with pytest.raises(UserError, match=r"cannot be exported to ONNX \(Exporting the operator 'aten::fft_fft'.*use --format safetensors"):
        onnx_bytes(trained)
    with pytest.raises(UserError, match=r"cannot be exported to TorchScript \(.*; use --format safetensors"):
        torchscript_bytes(trained)


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_dir, tmp_path):
    broken = tmp_path / "broken.pt"
    [best] = (run_dir / "checkpoints").glob("best_model_*.pt")
    cases = [
        (["export", str(run_dir), "--format", "pickle", "--output", str(tmp_path / "m.pkl")], "invalid --format 'pickle'"),
        (["export", str(run_dir), "--format", "onnx", "--output", str(tmp_path / "m.pt")], "unsupported file type '.pt'; use .onnx"),
        (["export", str(run_dir), "--output", str(tmp_path / "no" / "m.safetensors")], "does not exist"),
        (["export", str(tmp_path / "missing")], "no such file or directory"),
        (["export", str(broken)], "must sit in the checkpoints/ folder"),
    ]
    broken.write_bytes(best.read_bytes())
    for args, match in cases:
        result = invoke_app(*args)
        assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.pt"]


@pytest.mark.e2e  # a real process (or a real store): seconds, not milliseconds
def test_unknown_format_in_a_real_process(run_dir, tmp_path):
    result = run_app("export", str(run_dir), "--format", "pickle", cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, result.stdout, "invalid --format 'pickle': choose safetensors, torchscript, onnx")
    assert list(tmp_path.iterdir()) == []
