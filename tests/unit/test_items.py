"""User datasets whose items are dicts: --input-key and --target-key, defaults, one-line errors."""

from __future__ import annotations

import pytest

from conftest import assert_one_error_line, invoke_app, train_in_process
from ignite_app.config import Config
from ignite_app.data.items import DictItems
from ignite_app.data.select import load_splits
from ignite_app.errors import UserError

DICT_DATA = """
import torch
from torch.utils.data import Dataset

class Records(Dataset):
    def __init__(self, n, x_key, y_key):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.x_key, self.y_key = x_key, y_key

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {self.x_key: self.x[i].tolist(), self.y_key: int(self.y[i]), "id": i}

def hf_like(train):
    return Records(80 if train else 20, "pixel_values", "label")

def custom(train):
    return Records(80 if train else 20, "features_a", "cls")
"""


def test_dict_items_with_default_keys_train(user_module, tmp_path):
    name = user_module(DICT_DATA)
    splits = load_splits(Config(dataset=f"{name}:hf_like"))
    assert isinstance(splits.train, DictItems) and splits.spec.input_shape == (6,) and splits.spec.num_outputs == 2
    run = train_in_process(tmp_path / "run", epochs=3, dataset=f"{name}:hf_like", batch_size=16)
    assert run.trainer.state.iteration == 15
    assert float(run.evaluator.state.metrics["accuracy"]) > 0.6


def test_dict_items_with_named_keys(user_module):
    name = user_module(DICT_DATA)
    splits = load_splits(Config(dataset=f"{name}:custom", input_key="features_a", target_key="cls"))
    x, y = splits.train[3]
    assert x.shape == (6,) and y.ndim == 0


def test_keys_that_do_not_match_are_one_line_listing_the_keys(user_module):
    name = user_module(DICT_DATA)
    with pytest.raises(UserError, match=r"among their keys \(features_a, cls, id\); pass --input-key KEY"):
        load_splits(Config(dataset=f"{name}:custom"))
    result = invoke_app("train", "--dataset", f"{name}:custom", "--input-key", "features_a", "--target-key", "label")
    line = assert_one_error_line(result.exit_code, result.stderr, result.output, "--target-key 'label' is not among")
    assert "features_a, cls, id" in line
