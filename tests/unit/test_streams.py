"""IterableDatasets: epochs of --steps-per-epoch batches, dict items, a stateful stream's position in the checkpoint."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_one_error_line, invoke_app, train_in_process
from ignite_app.config import Config
from ignite_app.data.select import load_splits
from ignite_app.data.streams import Stream
from ignite_app.errors import UserError

STREAMS = """
import torch
from torch.utils.data import IterableDataset

class Counting(IterableDataset):
    '''A finite, resumable stream: state_dict() says how many items of the current pass were read.'''
    num_classes = 2

    def __init__(self, n, seed, dicts=False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, generator=g)
        self.y = (self.x.sum(1) > 0).long()
        self.n, self.pos, self.dicts = n, 0, dicts

    def __iter__(self):
        while self.pos < self.n:
            i = self.pos
            self.pos += 1
            yield {"inputs": self.x[i], "label": self.y[i]} if self.dicts else (self.x[i], self.y[i])
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])

class Plain(IterableDataset):
    '''No state_dict: a resumed run restarts it.'''
    num_classes = 2

    def __init__(self, n):
        self.inner = Counting(n, 0)

    def __iter__(self):
        self.inner.pos = 0
        return iter(self.inner)

class Unlabelled(Plain):
    num_classes = None

def stateful(train):
    return Counting(100 if train else 30, 0 if train else 1)

def records(train):
    return Counting(100 if train else 30, 0 if train else 1, dicts=True)

def plain(train):
    return Plain(100 if train else 30)

def unlabelled(train):
    return Unlabelled(10)
"""


def test_an_iterable_dataset_trains_in_epochs_of_steps(user_module, tmp_path):
    name = user_module(STREAMS)
    splits = load_splits(Config(dataset=f"{name}:stateful"))
    assert isinstance(splits.train, Stream) and splits.spec.input_shape == (5,) and splits.spec.num_outputs == 2
    assert splits.train.data.pos == 0, "peeking at the first item does not move a stateful stream"
    run = train_in_process(tmp_path / "run", epochs=3, dataset=f"{name}:stateful", steps_per_epoch=4, batch_size=10)
    assert run.trainer.state.iteration == 12 and run.epoch_length == 4
    assert splits.train.data.pos == 0 and run.splits.train.data.pos == 20, "the stream went on across epochs: 120 items of 100"
    assert "accuracy" in run.evaluator.state.metrics
    assert run.to_save["data_stream"].state_dict() == {"pos": 20}


def test_dict_items_of_a_stream(user_module, tmp_path):
    name = user_module(STREAMS)
    run = train_in_process(tmp_path / "run", epochs=1, dataset=f"{name}:records", steps_per_epoch=3, batch_size=10)
    assert run.trainer.state.iteration == 3 and run.splits.train.keys == ("inputs", "label")


def test_stream_mistakes_are_one_error_line(user_module, tmp_path):
    name = user_module(STREAMS)
    result = invoke_app("train", "--dataset", f"{name}:stateful", "--output-dir", str(tmp_path / "a"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "--steps-per-epoch N")
    result = invoke_app("train", "--dataset", f"{name}:unlabelled", "--steps-per-epoch", "2", "--output-dir", str(tmp_path / "b"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "num_classes attribute")
    result = invoke_app("train", "--dataset", f"{name}:stateful", "--steps-per-epoch", "2", "--num-workers", "1",
                        "--output-dir", str(tmp_path / "c"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "--num-workers 0")
    with pytest.raises(UserError, match=r"not among their keys \(inputs, label\)"):
        load_splits(Config(dataset=f"{name}:records", input_key="pixels"))


def test_evaluate_reads_a_validation_stream_to_its_end(user_module, tmp_path):
    from ignite_app.tools.inference import evaluate

    name = user_module(STREAMS)
    result = invoke_app("train", "--dataset", f"{name}:stateful", "--steps-per-epoch", "3", "--epochs", "1",
                        "--no-progress", "--output-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.stderr
    evaluation = evaluate(tmp_path / "run", device="cpu")
    assert evaluation.samples == 30 and 0 <= evaluation.metrics["accuracy"] <= 1


def test_steps_per_epoch_is_refused_for_sized_data(tmp_path):
    result = invoke_app("train", "--steps-per-epoch", "3", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "--steps-per-epoch applies to IterableDataset")


def test_logs_of_a_stream_run_without_a_checkpoint_know_its_epoch_length(user_module):
    from ignite_app.tools.logs import epoch_length_from_config

    name = user_module(STREAMS)
    assert epoch_length_from_config(Config(dataset=f"{name}:stateful", steps_per_epoch=7)) == 7
