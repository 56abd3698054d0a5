"""Shared test helpers: run the real command in a subprocess, read runs back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"
E2E_DIR = Path(__file__).resolve().parent / "e2e"
FAULT_TRAIN_SCRIPT = Path(__file__).resolve().parent / "fault_train.py"  # train.py with TEST_FAULT injected

# Small, fast settings for tests that train for real (seconds on 2 CPU cores).
FAST = ["--no-progress", "--epochs", "2", "--patience", "0"]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess: one thread each, so parallel tests do not fight for the 2 cores."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def train_script(env: dict[str, str]) -> Path:
    """scripts/train.py, or the test's fault-injecting copy of it when ``TEST_FAULT`` is set."""
    return FAULT_TRAIN_SCRIPT if "TEST_FAULT" in env else TRAIN_SCRIPT


def run_train(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python scripts/train.py ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, str(train_script(env)), *args], cwd=cwd, env=cli_env(**env),
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
        [sys.executable, str(train_script(env)), *args], cwd=cwd, env=cli_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll ``condition()`` every 10 ms until it holds; fail if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run exited ({proc.returncode}) before the awaited state\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(condition, '__doc__', None) or condition}")
        time.sleep(0.01)


def torchrun_command(*args: str, nproc: int = 2, script: Path = TRAIN_SCRIPT) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N SCRIPT ARGS``: one machine, a free port, gloo on the CPU."""
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc_per_node={nproc}", str(script), *args]


def run_torchrun(*args: str, cwd: Path | None = None, nproc: int = 2, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run the train command under torchrun to completion and capture its output."""
    return subprocess.run(torchrun_command(*args, nproc=nproc), cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start_torchrun(*args: str, cwd: Path | None = None, nproc: int = 2, **env: str) -> subprocess.Popen:
    """Start the train command under torchrun without waiting (for signal tests)."""
    return subprocess.Popen(torchrun_command(*args, nproc=nproc), cwd=cwd, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


# --- checkpoint doctoring, for the tests of hostile, damaged and foreign checkpoints ---------------


class ShellPayload:
    """Unpickling this runs a shell command that creates ``marker``: the classic hostile checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload:
    """Unpickling this runs Python code through ``builtins.exec`` that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def write_sidecar(path: Path) -> None:
    """A ``.sha256`` sidecar that matches ``path`` as it is now."""
    import hashlib

    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


def flip_tensor_byte(path: Path) -> None:
    """Invert one byte in the middle of the largest tensor record of a torch zip checkpoint."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def save_as_if_on_cuda(obj: object, path: Path) -> None:
    """``torch.save`` as on a GPU machine: every storage is recorded as living on ``cuda:0``."""
    import torch

    tagger = lambda storage: "cuda:0"  # noqa: E731
    torch.serialization.register_package(1, tagger, lambda storage, location: None)
    try:
        torch.save(obj, path)
    finally:
        registry = torch.serialization._package_registry  # no public way to unregister
        registry[:] = [entry for entry in registry if entry[1] is not tagger]


def train_in_process(out: Path, epochs: int = 1, **options: object):
    """A real run (digits unless ``options`` say otherwise, every default handler) trained in this process on the CPU."""
    import torch

    from ignite_app.config import Config
    from ignite_app.train.build import build_run
    from ignite_app.train.loop import close_run

    settings = {"dataset": "digits", "patience": 0, "progress": False, "device": "cpu", **options}
    cfg = Config(epochs=epochs, output_dir=str(out), **settings)  # type: ignore[arg-type]
    run = build_run(cfg, torch.device("cpu"), echo=lambda line: None)
    try:
        run.trainer.run(run.train_loader, max_epochs=epochs, epoch_length=run.epoch_length)
    finally:
        close_run(run)
    return run


def trained_weights(run) -> dict:
    """The trained model's parameters and buffers, copied."""
    from ignite_app.models.build import unwrap_model

    return {k: v.detach().clone() for k, v in unwrap_model(run.model).state_dict().items()}


def invoke_app(*args: str):
    """Run ``ignite-app ARGS`` in-process through click's CliRunner: exit code, stdout and stderr apart."""
    from click.testing import CliRunner

    from ignite_app.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def train_tiny_run(run_dir: Path, *extra: str) -> Path:
    """Train 2 epochs on digits in-process, on one thread, into ``run_dir``: a finished run to look at."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke_app("train", *FAST, "--output-dir", str(run_dir), *extra)
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output + result.stderr
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The suite's one finished run (2 epochs of the default CNN on digits), shared by the tools' tests: read it, never change it."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny") / "run")


def signalling_model(name: str, net: str) -> str:
    """Source of a module defining ``name``: the layers ``net`` (an expression using ``nn``) in a model that sends
    its own process ``SIGNAL_AT=K:NAME`` (e.g. ``12:TERM``) during training step K, to stop a run at an exact step."""
    return f'''
import os
import signal

from torch import nn


class {name}(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = {net}
        at, _, name = os.environ.get("SIGNAL_AT", "").partition(":")
        self.at, self.name, self.calls = int(at or 0), name, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), getattr(signal, "SIG" + self.name))
        return self.net(x)
'''


def same_values(a: Any, b: Any) -> bool:
    """torch.equal, where NaN equals NaN (a stored fill value of a column that is all missing, ...)."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return a.dtype == b.dtype and bool((a == b).all())
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def assert_same_tree(a: object, b: object, where: str = "") -> None:
    """Nested checkpoint contents are identical: tensors by dtype and value (NaN equal to NaN), everything else by ==."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and same_values(a, b), f"tensor {where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys of {where} differ: {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where} differs in length"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> Path:
    """The bundled digits as an npz file: the same data as ``--dataset digits``, without importing scikit-learn per run."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=(bunch.images / 16.0).astype(np.float32)[:, None], y=bunch.target.astype(np.int64))
    return path


def assert_one_error_line(exit_code: int, stderr: str, output: str, match: str = "") -> str:
    """Exit code 2, exactly one stderr line starting with ``Error:``, and no traceback anywhere."""
    lines = stderr.strip().splitlines()
    assert exit_code == 2, output
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in output + stderr
    assert match in lines[0], lines[0]
    return lines[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ is end-to-end: ``pytest -m "not e2e"`` is the fast, in-process tier."""
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# issue 15: hostile inputs shared by the unit and end-to-end tests
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))  # 9**9 "lol"s if expanded
