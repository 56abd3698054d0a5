"""The search file of ``ignite-app tune``: distributions, and one Error line for every malformed entry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import assert_one_error_line, invoke_app
from ignite_app.errors import UserError
from ignite_app.tools.tune import counted, load_search


def search_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


def test_every_kind_of_distribution_reads_as_optunas(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    text = ("lr: {log_uniform: [1.0e-4, 1.0e-1]}\nweight_decay: {uniform: [0, 0.1]}\nepochs: {int: [1, 3]}\n"
            "log_every: {log_int: [1, 100]}\nbatch-size: {choice: [32, 64, 128]}\n")
    search = load_search(search_file(tmp_path, text), {})
    assert search == {
        "lr": FloatDistribution(1e-4, 1e-1, log=True), "weight_decay": FloatDistribution(0.0, 0.1),
        "epochs": IntDistribution(1, 3), "log_every": IntDistribution(1, 100, log=True),
        "batch_size": CategoricalDistribution([32, 64, 128]),
    }


@pytest.mark.parametrize("text, message", [
    ("model_args.hidden: {int: [64, 512]}\n", "unknown key 'model_args.hidden'; tunable keys are: dataset"),
    ("output_dir: {choice: [a, b]}\n", "unknown key 'output_dir'"),
    ("lr: 0.1\n", "lr must be one of {log_uniform: [...]}"),
    ("lr: {normal: [0, 1]}\n", "lr must be one of"),
    ("lr: {log_uniform: [1.0e-4]}\n", "lr: log_uniform takes [low, high]"),
    ("lr: {log_uniform: [0, 1]}\n", "lr: log_uniform [0, 1]:"),
    ("epochs: {int: [1.5, 3]}\n", "epochs: int [1.5, 3]: bounds must be integers"),
    ("lr: {uniform: [0.1, 0.01]}\n", "lr: uniform [0.1, 0.01]:"),
    ("batch_size: {choice: []}\n", "batch_size: choice takes a list of values"),
    ("batch_size: {choice: [0, 64]}\n", "batch_size = 0 is not a valid value (invalid --batch-size 0"),
    ("optimizer: {choice: [adam, lion]}\n", "optimizer = 'lion' is not a valid value"),
    ("- lr\n", "must map option names to distributions"),
    ("lr: {log_uniform: [1, 2]\n", "is not valid YAML"),
    ("lr: !!python/object/apply:os.system [echo hi]\n", "is not valid YAML"),  # loaded safely: never runs code
])
def test_a_malformed_search_file_is_one_user_error_naming_the_entry(tmp_path, text, message):
    with pytest.raises(UserError) as info:
        load_search(search_file(tmp_path, text), {})
    assert message in str(info.value) and str(info.value).startswith(f"--search {tmp_path / 'search.yaml'}")


def test_tune_command_errors_are_one_line_and_write_nothing(tmp_path):
    good = search_file(tmp_path, "lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    cases = [
        (["--search", str(good)], "tune needs --output-dir STUDY_DIR"),
        (["--search", str(good), "--output-dir", str(tmp_path / "s"), "--trials", "0"], "invalid --trials 0"),
        (["--search", str(tmp_path / "none.yaml"), "--output-dir", str(tmp_path / "s")], "no such file"),
        (["--search", str(good), "--output-dir", str(tmp_path / "s"), "--resume", str(tmp_path)], "drop --resume"),
        (["--search", str(good), "--output-dir", str(tmp_path / "s"), "--epochs", "0"], "invalid --epochs 0"),
    ]
    for args, message in cases:
        result = invoke_app("tune", "--trials", "2", *args)
        assert_one_error_line(result.exit_code, result.stderr, result.output, message)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("module", ["optuna", "optuna_integration"])
def test_a_missing_tune_extra_is_one_error_line_naming_it(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    good = search_file(tmp_path, "lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    result = invoke_app("tune", "--trials", "2", "--search", str(good), "--output-dir", str(tmp_path / "s"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, 'pip install "ignite_app[tune]"')


class FakeTrial:
    def __init__(self, state: str, **attrs: object) -> None:
        from optuna.trial import TrialState

        self.state, self.user_attrs = TrialState[state], attrs


def test_a_trial_failed_by_a_dead_process_is_not_counted_but_one_failed_by_its_values_is():
    assert counted(FakeTrial("COMPLETE")) and counted(FakeTrial("PRUNED")) and counted(FakeTrial("RUNNING"))
    assert counted(FakeTrial("FAIL", error="the training loss became nan"))
    assert not counted(FakeTrial("FAIL")) and not counted(FakeTrial("WAITING"))
