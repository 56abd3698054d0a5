"""Inputs that used to end in a traceback: each is one ``Error:`` line, exit code 2, and no run directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error_line, invoke_app, train_tiny_run

USER_DATA = """
    import torch
    from torch.utils.data import TensorDataset

    def shifted(train=True):
        x = torch.rand(40, 4)
        y = torch.arange(40) % 3 - (1 if train else 0)   # train labels -1..1
        return TensorDataset(x, y)

    def beyond(train=True):
        x = torch.rand(40, 4)
        y = torch.arange(40) % 3 + (0 if train else 5)   # validation labels 5..7, train 0..2
        return TensorDataset(x, y)

    class Quits(torch.nn.Module):
        def __init__(self):
            import sys
            sys.exit(0)
"""


def train(tmp_path: Path, *args: str):
    """``ignite-app train`` in-process into tmp_path/out."""
    return invoke_app("train", "--no-progress", "--epochs", "1", *args, "--output-dir", str(tmp_path / "out"))


def npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    """``npz:PATH`` of arrays x and y."""
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


@pytest.mark.parametrize("make, match", [
    (lambda p: npz(p / "nofeat.npz", np.zeros((20, 0)), np.arange(20) % 2), "x has shape (20, 0), with no features per sample"),
    (lambda p: npz(p / "complex.npz", np.ones((20, 3)) * 1j, np.arange(20) % 2), "must be real numbers, not complex"),
])
def test_bad_data_files(tmp_path, make, match):
    result = train(tmp_path, "--dataset", make(tmp_path))
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, match", [
    (["--model", "builtins:breakpoint"], "--model builtins:breakpoint: breakpoint is not a class or function written in Python"),
    (["--model", "sys:exit"], "--model sys:exit: exit is not a class or function written in Python"),
    (["--dataset", "os:system"], "--dataset os:system: system is not a class or function written in Python"),
    (["--model", "sys:maxsize"], "maxsize is not a class or function written in Python"),
    (["--model", "{mod}:Quits"], "Quits() failed (SystemExit: 0)"),
])
def test_user_code_that_is_not_a_model_or_labels_out_of_range(user_module, tmp_path, args, match):
    mod = user_module(USER_DATA)
    result = train(tmp_path, *[a.format(mod=mod) for a in args])
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not (tmp_path / "out").exists()


def test_output_dir_below_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke_app("train", "--no-progress", "--output-dir", str(tmp_path / "file" / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "is a file, not a folder")


@pytest.fixture
def read_only(tmp_path):
    """A tmpfs holding a finished run, remounted read-only (skipped where mounting is not permitted)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        train_tiny_run(mount / "run", "--model", "mlp")
        np.savetxt(mount / "x.csv", np.zeros((2, 64)), delimiter=",")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_file_system_is_one_line_everywhere(read_only):
    run = read_only / "run"
    cases = [
        (["train", "--no-progress", "--output-dir", str(read_only / "new")], "cannot write the run directory"),
        (["train", "--no-progress", "--resume", str(run), "--epochs", "3"], "cannot write the run directory"),
        (["predict", str(run), "--input", str(read_only / "x.csv"), "--output", str(read_only / "p.csv")], "cannot write"),
        (["export", str(run), "--output", str(read_only / "m.safetensors")], "cannot write"),
        (["logs", str(run), "--csv", str(read_only / "s.csv")], "cannot write"),
    ]
    for args, match in cases:
        result = invoke_app(*args)
        line = assert_one_error_line(result.exit_code, result.stderr, result.output, match)
        assert "Read-only file system" in line, line


def test_a_huge_label_names_a_class_instead_of_sizing_the_output_layer(tmp_path):
    """A label of 3e9 once sized a 3-billion-unit output layer; labels of any kind now name classes 0..K-1
    (issue 11), so it is one of three classes. (Latin-1 files and -1/+1 labels are read too: tests/unit/test_tabular.py.)"""
    from ignite_app.config import Config
    from ignite_app.data.select import load_splits

    data = npz(tmp_path / "big.npz", np.random.rand(20, 3), np.array([0, 1] * 9 + [0, 3e9]))
    splits = load_splits(Config(dataset=data, model="mlp"))
    assert splits.spec.num_outputs == 3 and splits.preprocess.classes == ["0", "1", "3000000000"]



def test_a_bom_in_a_numeric_csv_is_not_a_header(tmp_path):
    from ignite_app.config import Config
    from ignite_app.data.select import load_splits

    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(f"{i},{i + 1},{i % 2}\n" for i in range(10)).encode())
    splits = load_splits(Config(dataset=f"csv:{path}", model="mlp"))
    assert len(splits.train) + len(splits.val) == 10  # the first row is data, not a header
