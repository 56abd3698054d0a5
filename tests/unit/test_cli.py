"""The train command end to end: in-process through click's CliRunner, and as real subprocesses.

Covers the run-directory contract (config.yaml, checkpoints loaded with ``weights_only=True``,
TensorBoard event files read back with TensorBoard's own reader), --config, resume,
early stopping, every bad input (exit 2, one ``Error:`` line) and a NaN loss (exit 3).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import FAST, assert_one_error_line, read_scalars, run_app, run_train
from ignite_app.cli import main, train_command
from ignite_app.config import Config, build_config, load_yaml

DIGITS_EPOCH = 23  # iterations per epoch: 1438 training digits, batch 64
LOG_EVERY = 10  # the default --log-every
SHORT = ["--no-progress", "--model", "mlp", "--epochs", "2", "--patience", "3"]
CONTRACT_OPTIONS = [
    "--device", "--dataset", "--target", "--task", "--model", "--epochs", "--batch-size", "--lr", "--optimizer",
    "--weight-decay", "--seed", "--patience", "--num-workers", "--n-saved", "--output-dir", "--resume", "--config",
    "--progress / --no-progress",
]

pytestmark = pytest.mark.usefixtures("torch_threads")


def invoke(*args: str, command=main):
    """Run the command in-process; ``main`` needs the ``train`` subcommand, ``train_command`` does not."""
    argv = ["train", *args] if command is main else list(args)
    return CliRunner().invoke(command, argv, catch_exceptions=True)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> dict:
    """A checkpoint, loaded the only safe way."""
    return torch.load(path, weights_only=True, map_location="cpu")


def checkpoints(run_dir: Path, prefix: str = "checkpoint_") -> list[Path]:
    """Checkpoint files of one kind, by iteration."""
    return sorted((run_dir / "checkpoints").glob(f"{prefix}*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def check_run_dir(run_dir: Path, metric: str, epoch_length: int, epochs: int) -> dict[str, list[tuple[int, float]]]:
    """The run-directory contract; returns the TensorBoard scalars."""
    cfg = build_config(load_yaml(run_dir / "config.yaml"), {})
    last = load(checkpoints(run_dir)[-1])
    assert {"model", "optimizer", "trainer", "rng", "loss_tracker", "best_checkpointer"} <= set(last)
    assert (last["trainer"]["iteration"], last["trainer"]["epoch_length"]) == (epochs * epoch_length, epoch_length)
    assert ("early_stopping" in last) == (cfg.patience > 0)
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    best = checkpoints(run_dir, "best_model_")
    assert len(best) == 1 and set(load(best[0])["model"]) == set(last["model"])
    scalars = read_scalars(run_dir)
    assert {"train/loss", "val/loss", f"val/{metric}"} <= set(scalars)
    val_steps = [epoch_length * e for e in range(1, epochs + 1)]
    assert [s for s, _ in scalars["val/loss"]] == [s for s, _ in scalars[f"val/{metric}"]] == val_steps
    train_steps = [s for s, _ in scalars["train/loss"]]
    assert train_steps == list(range(LOG_EVERY, epochs * epoch_length + 1, LOG_EVERY))
    return scalars


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished 2-epoch MLP run on digits (with early-stopping state), trained once for this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("short") / "run"
    result = invoke(*SHORT, "--output-dir", str(out))
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture
def run_copy(short_run, tmp_path):
    """A private copy of the short run, to resume or damage."""
    copy = tmp_path / "copy"
    shutil.copytree(short_run[0], copy)
    return copy


# --- the run-directory contract ----------------------------------------------------------------

def test_short_run_leaves_the_run_directory_contract(short_run):
    out, result = short_run
    check_run_dir(out, "accuracy", DIGITS_EPOCH, epochs=2)
    assert build_config(load_yaml(out / "config.yaml"), {}) == Config(
        model="mlp", epochs=2, patience=3, progress=False, output_dir=str(out), auto_batch=True,
        threads=1)  # issue 16: the resolved thread count (the run had 1) is recorded
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert all("train_loss" in line and "val_loss" in line and "val_accuracy" in line for line in lines)
    assert f"done: 2 epoch(s); checkpoint {out}/checkpoints/checkpoint_46.pt" in result.stdout


def test_config_file_with_flags_overriding_on_regression(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("dataset: synthetic-regression\nepochs: 3\nlr: 0.01\nbatch-size: 128\npatience: 0\nprogress: false\n")
    out = tmp_path / "run"
    result = invoke("--config", str(config), "--epochs", "1", "--output-dir", str(out), command=train_command)
    assert result.exit_code == 0, result.output
    saved = build_config(load_yaml(out / "config.yaml"), {})
    assert (saved.epochs, saved.lr, saved.batch_size, saved.dataset) == (1, 0.01, 128, "synthetic-regression")
    check_run_dir(out, "mae", epoch_length=13, epochs=1)  # 1600 samples / 128
    assert "val_mae" in result.stdout and "regression on synthetic-regression" in result.stdout


def test_a_run_directory_with_files_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = invoke(*FAST, "--output-dir", str(out))
    line = assert_one_error_line(result.exit_code, result.stderr, result.output)
    assert f"--resume {out}" in line and "--output-dir" in line
    assert snapshot(tmp_path) == before


USER_CODE = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    CALLS = []

    def get_dataset(train):
        CALLS.append(train)
        g = torch.Generator().manual_seed(1 if train else 2)
        x = torch.randn(160 if train else 40, 5, generator=g)
        return TensorDataset(x, (x[:, 0] > 0).to(torch.int32))  # int32 labels, as many loaders give

    class TwoWay(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 2)
        def forward(self, x):
            return self.lin(x)
"""


def test_user_model_and_dataset_by_import_path(user_module, tmp_path):
    import importlib

    name = user_module(USER_CODE, "mine")
    result = invoke(*SHORT, "--dataset", f"{name}:get_dataset", "--model", f"{name}:TwoWay", "--batch-size", "32",
                    "--output-dir", "run")
    assert result.exit_code == 0, result.output
    assert importlib.import_module(name).CALLS == [True, False]
    assert "classification on " + f"{name}:get_dataset: 160 train / 40 val samples, model TwoWay" in result.stdout
    check_run_dir(tmp_path / "run", "accuracy", epoch_length=5, epochs=2)
    assert load(checkpoints(tmp_path / "run")[-1])["model"]["lin.weight"].shape == (2, 5)


# --- resume ------------------------------------------------------------------------------------

def test_resume_continues_exactly_like_an_uninterrupted_run(run_copy, tmp_path):
    resumed = invoke("--resume", str(run_copy), "--epochs", "4")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {run_copy}/checkpoints/checkpoint_46.pt (iteration 46)" in resumed.stdout
    assert [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch")] == ["3/4", "4/4"]
    straight = tmp_path / "straight"
    result = invoke(*SHORT, "--epochs", "4", "--output-dir", str(straight))
    assert result.exit_code == 0, result.output

    resumed_scalars = check_run_dir(run_copy, "accuracy", DIGITS_EPOCH, epochs=4)
    straight_scalars = check_run_dir(straight, "accuracy", DIGITS_EPOCH, epochs=4)
    for tag in ("train/loss", "val/loss", "val/accuracy"):
        steps = [s for s, _ in resumed_scalars[tag]]
        assert len(steps) == len(set(steps)), f"duplicated steps in {tag}"
        assert resumed_scalars[tag] == straight_scalars[tag]
    a, b = load(checkpoints(run_copy)[-1]), load(checkpoints(straight)[-1])
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert build_config(load_yaml(run_copy / "config.yaml"), {}).epochs == 4


def test_resuming_a_finished_run_says_so_and_trains_nothing(short_run):
    out = short_run[0]
    before = snapshot(out)
    result = invoke("--resume", str(out))
    assert result.exit_code == 0, result.output
    assert "already completed 2 epoch(s) (--epochs 2); nothing to do: raise --epochs to train further" in result.stdout
    assert "epoch " not in result.stdout.replace("epoch(s)", "")
    assert snapshot(out) == before


def test_changing_the_model_on_resume_is_refused(short_run):
    out = short_run[0]
    before = snapshot(out)
    result = invoke("--resume", str(out), "--model", "cnn")
    assert_one_error_line(result.exit_code, result.stderr, result.output,
                          "--model cannot change when resuming (run has 'mlp', asked 'cnn')")
    assert snapshot(out) == before


def tamper(path: Path, change) -> None:
    """Rewrite one checkpoint with ``change`` applied to its model state (and a matching sidecar)."""
    state = load(path)
    change(state["model"])
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m.pop(next(iter(m))), "the checkpoint is for another model architecture (missing"),
        (lambda m: m.update({"extra.weight": torch.zeros(1)}), "the checkpoint is for another model architecture (unexpected"),
        (lambda m: m.update({k: torch.zeros(3, 3) for k in list(m)[:1]}), "in the checkpoint but"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_changes(run_copy, change, match):
    for path in checkpoints(run_copy):
        tamper(path, change)
    before = snapshot(run_copy)
    for target in (run_copy, checkpoints(run_copy)[-1]):
        result = invoke("--resume", str(target), "--epochs", "3")
        line = assert_one_error_line(result.exit_code, result.stderr, result.output, match)
        assert "no usable checkpoint" in line
    assert snapshot(run_copy) == before


def test_resume_falls_back_to_the_newest_checkpoint_that_fits(run_copy):
    newest, older = checkpoints(run_copy)[-1], checkpoints(run_copy)[0]
    tamper(newest, lambda m: m.pop(next(iter(m))))
    result = invoke("--resume", str(run_copy), "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert f"skipping checkpoint: {newest}: the checkpoint is for another model architecture" in result.stderr
    assert f"resuming from {older} (iteration {DIGITS_EPOCH})" in result.stdout
    assert "epoch   2/2" in result.stdout


# --- early stopping ----------------------------------------------------------------------------

def test_early_stopping_ends_the_run_before_epochs_and_says_why(tmp_path):
    # At lr 0.5 the MLP's validation loss stops improving within a few epochs.
    out = tmp_path / "run"
    result = invoke("--no-progress", "--model", "mlp", "--lr", "0.5", "--patience", "1", "--epochs", "10",
                    "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    last = load(checkpoints(out)[-1])
    epochs_run = last["trainer"]["iteration"] // DIGITS_EPOCH
    assert epochs_run < 10 and last["early_stopping"]["counter"] >= 1
    assert f"early stopping at epoch {epochs_run}: validation loss did not improve for 1 epochs" in result.stdout
    again = invoke("--resume", str(out))
    assert again.exit_code == 0 and f"was stopped early at epoch {epochs_run}" in again.stdout


# --- bad input ---------------------------------------------------------------------------------

BAD_MODELS = """
    from torch import nn

    class Narrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(10, 10))
        def forward(self, x):
            return self.net(x)

    class ThreeClasses(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        def forward(self, x):
            return self.net(x)
"""


@pytest.fixture
def bad_files(user_module, tmp_path):
    """Malformed inputs in tmp_path (the working directory); returns the name of a module of unfitting models."""
    (tmp_path / "malformed.yaml").write_text("epochs: [1\n")
    (tmp_path / "unknown.yaml").write_text("epoch: 3\n")
    (tmp_path / "typed.yaml").write_text("device: 0\n")
    (tmp_path / "text.csv").write_text("a,b\n1,2\nthree,4\n")
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 2)))
    return user_module(BAD_MODELS, "badmodels")


BAD_INPUTS = [
    (["--optimizer", "foo"], "Invalid value for '--optimizer': 'foo' is not one of 'adam', 'adamw', 'sgd'"),
    (["--task", "clustering"], "Invalid value for '--task'"),
    (["--epochs", "abc"], "Invalid value for '--epochs': 'abc' is not a valid integer"),
    (["--epochs", "0"], "invalid --epochs 0: expected an integer >= 1"),
    (["--lr", "-1"], "invalid --lr -1.0: expected a finite number > 0"),
    (["--bogus"], "No such option '--bogus'"),
    (["--dataset", "imagenet"], "invalid --dataset 'imagenet'"),
    (["--model", "resnet"], "invalid --model 'resnet'"),
    (["--time-limit", "soon"], "invalid --time-limit 'soon'"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["--config", "malformed.yaml"], "config file 'malformed.yaml' is not valid YAML"),
    (["--config", "unknown.yaml"], "unknown config key 'epoch'"),
    (["--config", "typed.yaml"], "invalid --device 0: expected a string"),
    (["--config", "."], "Invalid value for '--config'"),
    (["--dataset", "csv:missing.csv"], "CSV file 'missing.csv' does not exist"),
    (["--dataset", "csv:text.csv"], "non-numeric value 'three' in row 3, column 1"),
    (["--dataset", "npz:missing.npz"], "NPZ file 'missing.npz' does not exist"),
    (["--dataset", "npz:noy.npz"], "NPZ file 'noy.npz' has no array named 'y'"),
    (["--dataset", "nosuchpkg.data:get"], "cannot import 'nosuchpkg.data'"),
    (["--dataset", "synthetic-regression", "--model", "cnn"], "--model cnn needs image-shaped samples"),
    (["--model", "{models}:Narrow"], "the model does not accept inputs of shape (1, 8, 8)"),
    (["--model", "{models}:ThreeClasses"], "the model outputs (2, 3) per batch but this classification data needs (2, 10)"),
    (["--device", "gpu"], "invalid --device 'gpu': use auto, cpu, cuda, cuda:N or mps (this machine has: cpu"),
    (["--device", "cuda:x"], "invalid --device 'cuda:x'"),
    (["--device", "cuda:7"], "--device cuda:7 is not available"),
    (["--resume", "nothing"], "--resume nothing: no such file or directory"),
]


@pytest.mark.parametrize("args, match", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_files, tmp_path, args, match):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    before = snapshot(tmp_path)
    args = [a.format(models=bad_files) for a in args]
    result = invoke("--no-progress", *args, "--output-dir", "out")
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not (tmp_path / "out").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("__pycache__")} == before


@pytest.mark.e2e  # a real process
@pytest.mark.parametrize("args", [["--optimizer", "foo"], ["--device", "cuda:7"]])
def test_bad_input_in_a_real_process(tmp_path, args):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    result = run_train(*args, "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, result.stdout)
    assert list(tmp_path.iterdir()) == []


# --- help --------------------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [lambda: run_train("--help"), lambda: run_app("train", "--help")])
def test_help_lists_the_contract_options(runner):
    result = runner()
    assert result.returncode == 0 and result.stderr == ""
    missing = [opt for opt in CONTRACT_OPTIONS if opt not in result.stdout]
    assert not missing


def test_help_in_process_for_both_commands():
    for command, args in ((main, ["train", "--help"]), (train_command, ["--help"])):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0 and all(opt in result.output for opt in CONTRACT_OPTIONS)


# --- a NaN loss --------------------------------------------------------------------------------

NAN_MODEL = """
    from torch import nn

    class NaNAfter30(nn.Module):
        '''Trains normally for 30 steps, then returns NaN.'''

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
            self.steps = 0

        def forward(self, x):
            out = self.net(x)
            if self.training:
                self.steps += 1
                if self.steps > 30:
                    return out * float("nan")
            return out
"""


@pytest.mark.e2e  # a real process
def test_nan_loss_exits_3_with_the_iteration_and_keeps_finite_checkpoints(user_module, tmp_path):
    name = user_module(NAN_MODEL, "nanmodel")
    result = run_app("train", *FAST, "--epochs", "3", "--model", f"{name}:NaNAfter30", "--output-dir", "run", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("Error: the training loss became nan at iteration 31 (epoch 2)")
    saved = list((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert sorted(p.name for p in saved) == ["best_model_23.pt", "checkpoint_23.pt"]
    for path in saved:
        model = load(path)["model"]
        assert all(bool(torch.isfinite(t).all()) for t in model.values())


# --- the default command -----------------------------------------------------------------------

@pytest.mark.e2e  # a real process
def test_default_command_reaches_098_validation_accuracy(tmp_path):
    out = tmp_path / "run"
    result = run_train("--no-progress", "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    cfg = build_config(load_yaml(out / "config.yaml"), {})
    assert (cfg.dataset, cfg.model, cfg.epochs) == ("digits", "auto", 20)
    assert "model CNN" in result.stdout
    last = load(checkpoints(out)[-1])
    epochs = last["trainer"]["iteration"] // DIGITS_EPOCH
    scalars = check_run_dir(out, "accuracy", DIGITS_EPOCH, epochs)
    accuracy = scalars["val/accuracy"][-1][1]
    assert math.isfinite(accuracy) and accuracy >= 0.98, f"validation accuracy {accuracy:.4f} after {epochs} epochs"
