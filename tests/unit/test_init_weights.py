"""--init-weights: load what fits from a safetensors file or a checkpoint, report the rest, run no code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ShellPayload, assert_one_error_line, invoke_app
from ignite_app.errors import UserError
from ignite_app.models import MLP
from ignite_app.models.init import init_weights, load_matching

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_matching_tensors_are_copied_and_the_rest_reported(tmp_path):
    source = MLP(64, 10, hidden=(32, 16))
    target = MLP(64, 3, hidden=(32, 16, 8))
    report = load_matching(target, source.state_dict(), Path("src"))
    assert report.loaded == ["net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias"]
    assert report.skipped == ["net.7.weight", "net.7.bias"]  # 16 -> 8 here, 16 -> 10 there
    assert report.missing == ["net.10.weight", "net.10.bias"]
    assert torch.equal(target.net[1].weight, source.net[1].weight)
    assert report.line() == ("init weights from src: loaded 4 tensors; skipped (shape differs) 2: net.7.weight, "
                             "net.7.bias; missing from the file 2: net.10.weight, net.10.bias")


def test_weights_that_fit_nothing_are_a_user_error():
    with pytest.raises(UserError, match="no tensor fits this model"):
        load_matching(MLP(5, 2), MLP(7, 3, hidden=(4,)).state_dict(), Path("x.safetensors"))


def test_a_hostile_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": ShellPayload(marker)}, path)
    with pytest.raises(UserError, match="refused: it holds objects other than tensors"):
        init_weights(MLP(64, 10), str(path))
    assert not marker.exists()


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """The digits with labels mod 3: the same inputs, a different head."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("data") / "three.npz"
    np.savez(path, x=(digits.images / 16.0).astype(np.float32)[:, None], y=(digits.target % 3).astype(np.int64))
    return path


def test_fine_tuning_from_a_run_with_a_different_head(tmp_path, three_classes):
    first = tmp_path / "first"
    result = invoke_app("train", "--no-progress", "--model", "mlp", "--epochs", "1", "--patience", "0",
                        "--output-dir", str(first))
    assert result.exit_code == 0, result.output + result.stderr
    best = next((first / "checkpoints").glob("best_model_*.pt"))
    exported = tmp_path / "first.safetensors"
    assert invoke_app("export", str(best), "--output", str(exported)).exit_code == 0

    for source in (best, exported):
        out = tmp_path / f"tuned-{source.suffix[1:]}"
        tuned = invoke_app("train", "--no-progress", "--model", "mlp", "--epochs", "1", "--patience", "0",
                           "--dataset", f"npz:{three_classes}", "--init-weights", str(source), "--output-dir", str(out))
        assert tuned.exit_code == 0, tuned.output + tuned.stderr
        assert (f"init weights from {source}: loaded 4 tensors; skipped (shape differs) 2: net.7.weight, net.7.bias"
                in tuned.stdout)
        assert (out / "checkpoints").is_dir()


def test_a_missing_init_weights_file_is_one_error_line(tmp_path):
    result = invoke_app("train", "--no-progress", "--epochs", "1", "--init-weights", str(tmp_path / "nope.safetensors"),
                        "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "--init-weights")
    assert "no such file" in result.stderr and not (tmp_path / "run").exists()
