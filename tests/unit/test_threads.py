"""``--threads``: resolved once per run, recorded in config.yaml, applied to torch and to DataLoader workers."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from conftest import assert_one_error_line, invoke_app, train_tiny_run
from torch.utils.data import Dataset

from ignite_app.config import Config, build_config
from ignite_app.data.loaders import EpochSampler, make_loader
from ignite_app.errors import UserError
from ignite_app.train import threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("torch_default, cpus, expected", [(8, {0}, 1), (2, {0, 1, 2, 3}, 2), (4, {0, 1, 2, 3}, 4)])
def test_the_default_is_torchs_choice_capped_by_the_cpus_this_process_may_use(monkeypatch, torch_default, cpus, expected):
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_default)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    assert threads.default_threads() == expected


def test_use_threads_sets_torch_and_returns_the_config_that_records_it(restore_threads, monkeypatch):
    assert threads.use_threads(Config(threads=2)).threads == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert threads.use_threads(Config()).threads == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, "many"])
def test_a_bad_thread_count_is_refused(value):
    with pytest.raises(UserError, match=r"invalid --threads .*: expected an integer|expected an integer >= 1"):
        build_config({"threads": value}, {})


def test_threads_zero_on_the_command_line_is_one_error_line(tmp_path):
    result = invoke_app("train", "--threads", "0", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "invalid --threads 0: expected an integer >= 1")
    assert not (tmp_path / "run").exists()


def test_config_yaml_records_the_asked_and_the_resolved_thread_count(tmp_path, restore_threads):
    asked = train_tiny_run(tmp_path / "asked", "--threads", "2", "--epochs", "1")
    assert yaml.safe_load((asked / "config.yaml").read_text())["threads"] == 2
    resolved = train_tiny_run(tmp_path / "default", "--epochs", "1")  # runs on 1 thread: the default resolves to 1
    assert yaml.safe_load((resolved / "config.yaml").read_text())["threads"] == 1


class _ThreadCount(Dataset):
    """Each sample is the torch thread count of the process that fetched it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(torch.get_num_threads())]), torch.tensor(0)


@pytest.mark.parametrize("asked, seen", [(3, 3), (None, 1)])  # torch's own worker default is 1
def test_dataloader_workers_use_the_runs_thread_count(asked, seen):
    loader = make_loader(_ThreadCount(), 2, EpochSampler(4, 0, shuffle=False), in_memory=True, num_workers=1,
                         device=torch.device("cpu"), seed=0, threads=asked)
    assert [x.flatten().tolist() for x, _ in loader] == [[seen, seen]] * 2
