"""Resume that is exact and survives kills: the real command, stopped every way, against an uninterrupted run.

Every interrupted run is finished with ``--resume`` and must end equal to the uninterrupted one:
``torch.equal`` model, optimizer, RNG and every other tensor in the final checkpoint, the same
validation metrics, and the same TensorBoard scalars at every step (shuffling and dropout on).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    ExecPayload, ShellPayload, assert_same_tree, flip_tensor_byte, read_scalars, run_train, save_as_if_on_cuda,
    signalling_model, start_train, wait_for, write_sidecar,
)
from ignite_app.io import checkpoint as ckpt

EPOCH = 90  # iterations per epoch: 1438 digits training samples in batches of 16
EPOCHS = 3
LAST = EPOCH * EPOCHS


@pytest.fixture(scope="module")
def digits(digits_npz) -> Path:
    """The suite's digits NPZ (conftest), under this module's name for it."""
    return digits_npz


def base_args(digits: Path, out: Path, *extra: str) -> list[str]:
    """The default CNN (dropout on), shuffled batches of 16, early stopping on (patience 5), 3 epochs."""
    return ["--no-progress", "--dataset", f"npz:{digits}", "--batch-size", "16", "--epochs", str(EPOCHS),
            "--output-dir", str(out), *extra]


def resume_args(out: Path, *extra: str) -> list[str]:
    """Continue the run in ``out``."""
    return ["--no-progress", "--resume", str(out), *extra]


class Background:
    """A run started now and collected later, so that it overlaps with the test's own runs."""

    def __init__(self, args: list[str], out: Path, cwd: Path | None = None, **env: str) -> None:
        self.out, self.proc, self.stdout = out, start_train(*args, cwd=cwd, **env), None

    def result(self) -> Path:
        """Wait for the run (it must succeed) and return its directory."""
        if self.stdout is None:
            stdout, stderr = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, stderr
            self.stdout = stdout
        return self.out


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> Background:
    """The uninterrupted run that every interrupted one must reproduce (started at once, in the background)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return Background(base_args(digits, out), out)


# --- helpers -------------------------------------------------------------------------------------


def checkpoints(run: Path) -> Path:
    return run / ckpt.CHECKPOINT_DIR


def exists(path: Path):
    """A condition for :func:`wait_for`."""
    cond = lambda: path.exists()  # noqa: E731
    cond.__doc__ = str(path)
    return cond


def temp_file_exists(folder: Path, pattern: str = ".*.tmp"):
    """A condition: a save is in progress in ``folder``."""
    cond = lambda: folder.is_dir() and any(folder.glob(pattern))  # noqa: E731
    cond.__doc__ = f"{folder}/{pattern}"
    return cond


def wait_until_past(folder: Path, iteration: int, proc: subprocess.Popen) -> None:
    """Wait until the checkpoint of ``iteration`` is complete and the run has moved on into the next epoch.

    Nothing on disk shows progress inside an epoch, so the last step is a short pause (about 30 of the
    90 iterations of an epoch): a signal sent then lands mid-epoch, not in the epoch-end handlers.
    """
    wait_for(exists(folder / f"checkpoint_{iteration}.pt.sha256"), proc)
    time.sleep(0.2)


def stop(proc: subprocess.Popen, *signals: signal.Signals) -> tuple[int, str, str]:
    """Send ``signals`` (50 ms apart) and collect the exit code and output."""
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.05)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def stopped_at(stdout: str, reason: str) -> int:
    """The iteration that a graceful stop reports."""
    match = re.search(rf"stopped by {reason} at iteration (\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


def epoch_lines(*outputs: str) -> list[tuple[int, str]]:
    """Every epoch summary line as (epoch, losses and metrics), without the '/max' and the timing."""
    return [(int(m.group(1)), m.group(2)) for text in outputs
            for m in re.finditer(r"^epoch\s+(\d+)/\d+\s+(.*?)\s+[\d.]+s$", text, re.M)]


def deterministic_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars except timing and memory measurements (``perf/``), which no rerun reproduces."""
    return {tag: v for tag, v in read_scalars(run).items() if not tag.startswith("perf/")}


def event_dirs(run: Path) -> set[str]:
    """Folders (relative to the run) that hold TensorBoard event files."""
    return {str(p.parent.relative_to(run)) for p in run.rglob("events.out.tfevents.*")}


def assert_same_run(run: Path, reference: Background, *outputs: str) -> None:
    """``run`` (whose processes printed ``outputs``) ended exactly as the uninterrupted ``reference``."""
    ref = reference.result()
    final = f"checkpoint_{LAST}.pt"
    got = ckpt.read_checkpoint(checkpoints(run) / final, require_checksum=True)
    want = ckpt.read_checkpoint(checkpoints(ref) / final, require_checksum=True)
    got.pop("checkpointer"), want.pop("checkpointer")  # which files are kept depends on where the run stopped
    assert_same_tree(got, want, "checkpoint")
    scalars, ref_scalars = deterministic_scalars(run), deterministic_scalars(ref)
    assert scalars == ref_scalars
    steps = [s for s, _ in scalars["train/loss"]]
    assert steps == list(range(10, LAST + 1, 10)), "TensorBoard steps are duplicated or missing"
    assert [s for s, _ in scalars["val/loss"]] == [EPOCH * e for e in range(1, EPOCHS + 1)]
    assert event_dirs(run) == event_dirs(ref), "a resumed run must log into the same directory"
    if outputs:
        want = dict(epoch_lines(reference.stdout))
        got = epoch_lines(*outputs)
        assert {e for e, _ in got} == set(want), "every epoch is reported"
        for epoch, line in got:
            assert line == want[epoch], f"epoch {epoch}: {line} != {want[epoch]}"
    assert not list(checkpoints(run).glob(".*.tmp"))
    assert len(ckpt.train_checkpoints(run)) <= 2, "more checkpoints on disk than --n-saved"


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- models written into the test's folder and used as --model resume_models:NAME ---------------

MODELS = signalling_model("SignalNet", "nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))") + '''

class NanAfter(nn.Module):
    """A small net whose output turns NaN from training step NAN_AFTER on."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
        self.after, self.calls = int(os.environ.get("NAN_AFTER", "0")), 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.after and self.calls >= self.after:
                out = out * float("nan")
        return out
'''


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """A working directory holding ``resume_models.py``."""
    (tmp_path / "resume_models.py").write_text(MODELS)
    return tmp_path


# --- stopped every way, resumed, compared ---------------------------------------------------------


def test_sigkill_inside_a_save_and_after_a_save_then_resume_is_exact(digits, reference, tmp_path):
    run = tmp_path / "run"
    folder = checkpoints(run)
    # 1. one checkpoint kept, and a slow writer: the kill lands inside the save of the second one
    proc = start_train(*base_args(digits, run, "--n-saved", "1"), TEST_FAULT="slow-save:1")
    wait_for(temp_file_exists(folder, f".checkpoint_{2 * EPOCH}.pt.*.tmp"), proc)
    code, out1, _ = stop(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    stale = sorted(folder.glob(".*.tmp"))
    assert stale, "the kill should have landed inside a save"
    assert ckpt.read_checkpoint(folder / f"checkpoint_{EPOCH}.pt", require_checksum=True)["trainer"]["iteration"] == EPOCH
    # 2. resume; kill again as soon as the next checkpoint is complete (what follows it is lost)
    proc = start_train(*resume_args(run, "--n-saved", "2"))
    wait_for(exists(folder / f"checkpoint_{2 * EPOCH}.pt.sha256"), proc)
    code, out2, err2 = stop(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    for path in stale:
        assert f"removed stale temporary file {path}" in err2
    # 3. the newest checkpoint is damaged: resume names it, falls back to the older one and finishes.
    # Files that had left the kept set but whose removal a kill prevented are removed too.
    newest = folder / f"checkpoint_{2 * EPOCH}.pt"
    flip_tensor_byte(newest)
    evicted = [folder / "checkpoint_45.pt", folder / "best_model_45.pt"]
    for path in evicted:
        shutil.copy(folder / f"checkpoint_{EPOCH}.pt", path)
        write_sidecar(path)
    done = run_train(*resume_args(run))
    assert done.returncode == 0, done.stderr
    assert f"skipping checkpoint: {newest}: SHA-256 does not match" in done.stderr
    assert f"resuming from {folder / f'checkpoint_{EPOCH}.pt'}" in done.stdout
    for path in evicted:
        assert f"removed {path}: it had left the kept set" in done.stderr
        assert not path.exists() and not path.with_name(path.name + ".sha256").exists()
    assert_same_run(run, reference, out1, out2, done.stdout)


def test_sigterm_then_sigint_then_a_second_ctrl_c_mid_save_then_resume_is_exact(digits, reference, tmp_path):
    run = tmp_path / "run"
    folder = checkpoints(run)
    proc = start_train(*base_args(digits, run))
    wait_until_past(folder, EPOCH, proc)
    code, out1, err1 = stop(proc, signal.SIGTERM)
    assert code == 143, err1
    first = stopped_at(out1, "SIGTERM")
    # Mid-epoch in practice (~45 of 90 iterations after the pause); on a very slow machine it may land on the
    # epoch's last iteration, which is also exact. Stops at chosen mid-epoch iterations: the signal_at tests.
    assert EPOCH < first <= 2 * EPOCH, "the stop should land in the second epoch"
    assert ckpt.read_checkpoint(folder / f"checkpoint_{first}.pt", require_checksum=True)["trainer"]["iteration"] == first

    proc = start_train(*resume_args(run))
    wait_until_past(folder, 2 * EPOCH, proc)
    code, out2, err2 = stop(proc, signal.SIGINT)
    assert code == 130, err2
    second = stopped_at(out2, "SIGINT")
    assert 2 * EPOCH < second < LAST

    # a second Ctrl-C exits at once: the (slow) save in progress never completes
    proc = start_train(*resume_args(run), TEST_FAULT="slow-save:1")
    wait_for(temp_file_exists(folder), proc)
    code, out3, err3 = stop(proc, signal.SIGINT, signal.SIGINT)
    assert code == 130 and "second Ctrl-C: exiting now" in err3, err3
    assert not (folder / f"checkpoint_{LAST}.pt").exists() and not (folder / f"best_model_{LAST}.pt").exists()

    done = run_train(*resume_args(run))
    assert done.returncode == 0, done.stderr
    assert f"resuming from {folder / f'checkpoint_{second}.pt'}" in done.stdout
    assert_same_run(run, reference, out1, out2, out3, done.stdout)


def test_resume_at_an_epoch_boundary_from_a_checkpoint_saved_on_cuda(digits, reference, tmp_path):
    run = tmp_path / "run"
    first = run_train(*base_args(digits, run, "--epochs", "1"))
    assert first.returncode == 0, first.stderr
    path = checkpoints(run) / f"checkpoint_{EPOCH}.pt"
    state = ckpt.read_checkpoint(path, require_checksum=True)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # a GPU's generator state: skipped on this machine
    save_as_if_on_cuda(state, path)
    write_sidecar(path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # the file really asks for a GPU
    done = run_train(*resume_args(run, "--epochs", str(EPOCHS)))
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference, first.stdout, done.stdout)


def test_time_limit_stops_cleanly_with_a_resumable_checkpoint(digits, reference, tmp_path):
    run = tmp_path / "run"
    first = run_train(*base_args(digits, run, "--time-limit", "0.5s"))
    assert first.returncode == 0, first.stderr
    at = stopped_at(first.stdout, "time-limit")
    assert at < LAST
    assert ckpt.read_checkpoint(checkpoints(run) / f"checkpoint_{at}.pt", require_checksum=True)["trainer"]["iteration"] == at
    done = run_train(*resume_args(run, "--time-limit", "1h"))
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference, first.stdout, done.stdout)


@pytest.mark.parametrize(
    "options, signal_at, code",
    [
        (["--amp", "fp16", "--grad-accum", "3", "--lr-schedule", "cosine", "--optimizer", "adamw"], "100:TERM", 143),
        (["--amp", "bf16", "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "1e-4"], f"{EPOCH}:INT", 130),
    ],
    ids=["fp16-gradscaler-accum3-cosine-mid-window", "bf16-sgd-in-last-iteration-of-epoch"],
)
def test_signal_at_an_exact_iteration_with_mixed_precision_resumes_exactly(digits, models_dir, options, signal_at, code):
    """The model signals its own process, so the stop lands at a chosen iteration.

    Iteration 100 is inside a --grad-accum 3 window (its gradients must be saved); iteration 90 is
    the last of epoch 1, where the stop must wait for the epoch's validation and checkpoint.
    """
    model = ["--model", "resume_models:SignalNet", *options]
    reference = Background(base_args(digits, models_dir / "ref", *model), models_dir / "ref", cwd=models_dir)
    run = models_dir / "run"
    first = run_train(*base_args(digits, run, *model), cwd=models_dir, SIGNAL_AT=signal_at)
    assert first.returncode == code, first.stderr
    at = int(signal_at.split(":")[0])
    assert stopped_at(first.stdout, f"SIG{signal_at.split(':')[1]}") == at
    saved = ckpt.read_checkpoint(checkpoints(run) / f"checkpoint_{at}.pt", require_checksum=True)
    assert saved["trainer"]["iteration"] == at
    if "--grad-accum" in options:
        assert saved["grads"], "gradients of the unfinished accumulation window must be saved"
    assert ("scaler" in saved) == ("fp16" in options)
    done = run_train(*resume_args(run, "--trust-config"), cwd=models_dir)  # its config names our models module
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference, first.stdout, done.stdout)


# --- broken disks, broken losses, broken checkpoints ----------------------------------------------


def test_full_disk_keeps_the_previous_checkpoint_which_resumes(digits, reference, tmp_path):
    run = tmp_path / "run"
    folder = checkpoints(run)
    # saves: 1 best_model_90, 2 checkpoint_90, 3 best_model_180, 4 checkpoint_180 <- the disk is full
    first = run_train(*base_args(digits, run), TEST_FAULT="enospc-save:4")
    assert first.returncode == 4, first.stderr
    assert first.stderr.strip().splitlines()[-1] == (
        f"Error: no space left on device while writing {folder / f'checkpoint_{2 * EPOCH}.pt'}; free some space")
    assert "Traceback" not in first.stderr
    assert not list(folder.glob(".*.tmp")) and not (folder / f"checkpoint_{2 * EPOCH}.pt").exists()
    ckpt.read_checkpoint(folder / f"checkpoint_{EPOCH}.pt", require_checksum=True)
    done = run_train(*resume_args(run))
    assert done.returncode == 0, done.stderr
    assert f"resuming from {folder / f'checkpoint_{EPOCH}.pt'}" in done.stdout
    assert_same_run(run, reference, first.stdout, done.stdout)


def test_full_disk_on_a_real_tmpfs(digits, reference, tmp_path):
    ref_folder = checkpoints(reference.result())
    train_size = (ref_folder / f"checkpoint_{LAST}.pt").stat().st_size
    best_size = (ref_folder / f"best_model_{LAST}.pt").stat().st_size
    # room for epoch 1's two files, epoch 2's best model, and half of epoch 2's checkpoint
    size = 2 * best_size + train_size + train_size // 2 + 128 * 1024
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); the ENOSPC fault hook covers it")
    try:
        run = mount / "run"
        folder = checkpoints(run)
        result = run_train(*base_args(digits, run))
        assert result.returncode == 4, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error: no space left on device while writing")
        assert not list(folder.glob(".*.tmp"))
        saved = ckpt.read_checkpoint(folder / f"checkpoint_{EPOCH}.pt", require_checksum=True)
        assert saved["trainer"]["iteration"] == EPOCH
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(digits, models_dir):
    run = models_dir / "run"
    folder = checkpoints(run)
    result = run_train(*base_args(digits, run, "--model", "resume_models:NanAfter"), cwd=models_dir, NAN_AFTER="100")
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the training loss became nan at iteration 100 (epoch 2)"), last
    assert sorted(p.name for p in folder.glob("*.pt")) == [f"best_model_{EPOCH}.pt", f"checkpoint_{EPOCH}.pt"]
    for path in folder.glob("*.pt"):
        state = ckpt.read_checkpoint(path, require_checksum=True)
        tensors = list(state["model"].values()) + [t for s in state.get("optimizer", {}).get("state", {}).values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), f"{path.name} holds NaN"


def test_resume_refuses_every_hostile_or_broken_checkpoint_and_changes_nothing(digits, reference, tmp_path):
    import pickle

    from ignite_app.models import CNN, MLP

    ref = reference.result()
    good = checkpoints(ref) / f"checkpoint_{LAST}.pt"
    run = tmp_path / "run"
    folder = checkpoints(run)
    folder.mkdir(parents=True)
    shutil.copy(ref / "config.yaml", run / "config.yaml")
    marker = tmp_path / "PAYLOAD_RAN"
    state = ckpt.read_checkpoint(good)
    other_model = {**state, "model": MLP(64, 10).state_dict()}
    other_optimizer = {**state, "optimizer": torch.optim.SGD(CNN(1, 10).parameters(), lr=0.1, momentum=0.9).state_dict()}
    cases = {  # iteration: (write the file, write a matching sidecar, the reason resume must give)
        10: (lambda p: torch.save({**state, "trainer": ShellPayload(marker)}, p), True, "refused: it holds objects other than tensors"),
        20: (lambda p: torch.save({**state, "trainer": ExecPayload(marker)}, p), False, "refused: it holds objects other than tensors"),
        30: (lambda p: torch.save(ShellPayload(marker), p, _use_new_zipfile_serialization=False), True, "not a PyTorch zip checkpoint"),
        40: (lambda p: p.write_bytes(pickle.dumps(ExecPayload(marker))), False, "not a PyTorch zip checkpoint"),
        50: (lambda p: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), False, "not a PyTorch zip checkpoint"),
        60: (lambda p: p.write_bytes(b""), False, "the file is empty"),
        70: (lambda p: p.write_bytes(bytes(range(256)) * 40), False, "not a PyTorch zip checkpoint"),
        80: (lambda p: (shutil.copy(good, p), write_sidecar(p), flip_tensor_byte(p)), False, "SHA-256 does not match"),
        85: (lambda p: (shutil.copy(good, p), flip_tensor_byte(p)), False, "CRC check failed"),
        100: (lambda p: torch.save(other_model, p), True, "for another model architecture"),
        110: (lambda p: torch.save(other_optimizer, p), True, "for another optimizer or model layout"),
    }
    for iteration, (write, sidecar, _) in cases.items():
        path = folder / f"checkpoint_{iteration}.pt"
        write(path)
        if sidecar:
            write_sidecar(path)
    (folder / f".checkpoint_{LAST}.pt.x1y2z3.tmp").write_bytes(b"an interrupted save")
    before = file_digests(run)

    result = run_train(*resume_args(run))

    assert result.returncode == 2, result.stderr
    assert not marker.exists(), "a pickle payload was executed"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: no usable checkpoint in {run}: "), result.stderr
    reasons = dict(re.findall(rf"{re.escape(str(folder))}/(checkpoint_\d+\.pt): (.*?)(?=; {re.escape(str(folder))}/|$)", lines[0]))
    for iteration, (_, _, reason) in cases.items():
        assert reason in reasons[f"checkpoint_{iteration}.pt"], reasons
    assert file_digests(run) == before, "a refused resume must not change the run directory"


# --- issue 15: kills at random instants --------------------------------------------------------------


def test_sigkill_at_random_instants_then_resume_until_done_is_exact(digits, reference, tmp_path):
    """Ten SIGKILLs at random moments (in start-up, mid-epoch, inside a slowed save, just after a save),
    each followed by ``--resume``; the finished run equals the uninterrupted one, every scalar included.

    The moments are drawn from states the run is seen in, not from a clock alone, so no kill can come
    after the run has finished.
    """
    import random

    rng = random.Random(15)
    run = tmp_path / "run"
    folder = checkpoints(run)
    outputs, modes = [], []
    while len(modes) < 10:
        newest = max([int(p.stem.split("_")[1]) for p in ckpt.train_checkpoints(run)], default=0)
        mode = rng.choice(["start-up", "mid-epoch", "inside-save"] + (["after-save"] if newest < LAST - EPOCH else []))
        args = resume_args(run) if (run / "config.yaml").exists() else base_args(digits, run)
        stale = set(folder.glob(".*.tmp")) if folder.is_dir() else set()
        proc = start_train(*args, TEST_FAULT="slow-save:0.3")
        head = ""
        if mode == "start-up":
            time.sleep(rng.uniform(0.1, 1.5))
        elif mode == "mid-epoch":
            head = read_until(proc, "writing to ")
            time.sleep(rng.uniform(0.0, 0.4))  # less than an epoch
        elif mode == "inside-save":
            wait_for(lambda: folder.is_dir() and bool(set(folder.glob(".*.tmp")) - stale), proc)
        else:
            wait_for(exists(folder / f"checkpoint_{newest + EPOCH}.pt.sha256"), proc)
            time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{mode}: the run ended before its kill: {err}"
        outputs.append(head + out)
        modes.append(mode)
    done = run_train(*resume_args(run))
    assert done.returncode == 0, done.stderr
    assert len(set(modes)) >= 3, modes
    assert_same_run(run, reference, *outputs, done.stdout)


def read_until(proc: subprocess.Popen, text: str) -> str:
    """The process's stdout up to and including the first line holding ``text``."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


# --- tabular data: the preprocessing learned on the training split is part of every checkpoint ----------------


def write_table(path: Path, n: int = 20_000) -> Path:
    """A CSV as users have them: a text column, missing cells, numbers in raw units, word labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    age, income = rng.integers(18, 80, n), rng.integers(10_000, 90_000, n)
    city = rng.choice(["Paris", "Lyon", "Nice"], n)
    label = np.where(age / 80 + (city == "Nice") * 0.4 - income / 200_000 > 0.5, "high", "low")
    lines = ["age,income,city,risk"] + [f"{'NA' if i % 17 == 0 else age[i]},{income[i]},{'' if i % 23 == 0 else city[i]},{label[i]}"
                                         for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigterm_then_resume_of_a_csv_run_is_exact_with_its_preprocessing(tmp_path):
    table = write_table(tmp_path / "survey.csv")
    args = ["--no-progress", "--dataset", f"csv:{table}", "--epochs", "4", "--patience", "0"]
    whole = Background([*args, "--output-dir", str(tmp_path / "whole")], tmp_path / "whole")
    run = tmp_path / "run"
    proc = start_train(*args, "--output-dir", str(run))
    wait_until_past(checkpoints(run), 250, proc)  # 16,000 training rows in batches of 64: 250 iterations per epoch
    code, out1, _ = stop(proc, signal.SIGTERM)
    assert code == 143 and stopped_at(out1, "SIGTERM") > 250
    resumed = run_train(*resume_args(run))
    assert resumed.returncode == 0, resumed.stderr
    got = ckpt.read_checkpoint(checkpoints(run) / "checkpoint_1000.pt", require_checksum=True)
    want = ckpt.read_checkpoint(checkpoints(whole.result()) / "checkpoint_1000.pt", require_checksum=True)
    assert got["preprocess"]["classes"] == ["high", "low"] and got["preprocess"]["categories"] == [["Lyon", "Nice", "Paris"]]
    got.pop("checkpointer"), want.pop("checkpointer")
    assert_same_tree(got, want, "checkpoint")
    best = torch.load(ckpt.best_checkpoint(run), weights_only=True)  # what evaluate, predict and export read
    assert_same_tree(best["preprocess"], want["preprocess"], "best model preprocessing")
