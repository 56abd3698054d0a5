"""Config: validation at the edge, merging YAML with flags, durations, output folders, YAML round trip."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from ignite_app.config import (
    Config, build_config, config_keys, default_of, default_output_dir, load_yaml, parse_duration, save_yaml,
)
from ignite_app.errors import UserError


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"task": "clustering"}, r"invalid --task 'clustering': choose one of auto, classification, regression"),
        ({"optimizer": "lbfgs"}, r"invalid --optimizer 'lbfgs': choose one of adam, adamw, sgd"),
        ({"lr_schedule": "step"}, r"invalid --lr-schedule 'step': choose one of constant, cosine"),
        ({"amp": "fp8"}, r"invalid --amp 'fp8': choose one of off, bf16, fp16"),
        ({"backend": "mpi"}, r"invalid --backend 'mpi': choose one of nccl, gloo"),
        ({"epochs": 0}, r"invalid --epochs 0: expected an integer >= 1"),
        ({"epochs": 2.5}, r"invalid --epochs 2.5: expected an integer >= 1"),
        ({"epochs": True}, r"invalid --epochs True: expected an integer >= 1"),
        ({"batch_size": 0}, r"invalid --batch-size 0: expected an integer >= 1"),
        ({"patience": -1}, r"invalid --patience -1: expected an integer >= 0"),
        ({"num_workers": -2}, r"invalid --num-workers -2: expected an integer >= 0"),
        ({"n_saved": 0}, r"invalid --n-saved 0: expected an integer >= 1"),
        ({"log_every": 0}, r"invalid --log-every 0: expected an integer >= 1"),
        ({"grad_accum": 0}, r"invalid --grad-accum 0: expected an integer >= 1"),
        ({"seed": -1}, r"invalid --seed -1: expected an integer >= 0"),
        ({"lr": 0.0}, r"invalid --lr 0.0: expected a finite number > 0"),
        ({"lr": -0.1}, r"invalid --lr -0.1: expected a finite number > 0"),
        ({"lr": float("nan")}, r"invalid --lr nan: expected a finite number > 0"),
        ({"lr": float("inf")}, r"invalid --lr inf: expected a finite number > 0"),
        ({"weight_decay": -1e-4}, r"invalid --weight-decay -0.0001: expected a finite number >= 0"),
        ({"clip_grad_norm": 0.0}, r"invalid --clip-grad-norm 0.0: expected a finite number > 0"),
        ({"time_limit": -5.0}, r"invalid --time-limit -5.0: expected a finite number > 0"),
        ({"dataset": ""}, r"invalid --dataset: expected a name such as digits"),
        ({"dataset": "imagenet"}, r"invalid --dataset 'imagenet': use digits, synthetic-regression, csv:PATH"),
        ({"dataset": "csv:"}, r"invalid --dataset 'csv:': give a path, e.g. csv:data/train.csv"),
        ({"dataset": "npz:"}, r"invalid --dataset 'npz:': give a path, e.g. npz:data/train.npz"),
        ({"dataset": "pkg.mod:"}, r"invalid --dataset 'pkg.mod:'"),
        ({"model": "resnet"}, r"invalid --model 'resnet': use mlp, cnn or package.module:ClassName"),
        ({"model": "pkg.mod:1Net"}, r"invalid --model 'pkg.mod:1Net'"),
        ({"device": 0}, r"invalid --device 0: expected a string"),
        ({"target": ["a"]}, r"invalid --target \['a'\]: expected a string"),
        ({"output_dir": 5}, r"invalid --output-dir 5: expected a string"),
        ({"progress": "maybe"}, r"invalid --progress 'maybe': expected true or false"),
        ({"in_memory": None}, r"invalid --in-memory None: expected true or false"),
        ({"compile": 1}, r"invalid --compile 1: expected true or false"),
        ({"compile_mode": "fast"}, r"invalid --compile-mode 'fast': choose one of default, reduce-overhead"),
    ],
)
def test_bad_values_name_the_flag_and_the_fix(changes, match):
    with pytest.raises(UserError, match=match):
        Config(**changes)


def test_defaults_are_valid_and_match_the_contract():
    cfg = Config()
    assert (cfg.dataset, cfg.model, cfg.device, cfg.optimizer) == ("digits", "auto", "auto", "adam")
    assert (cfg.lr, cfg.seed, cfg.epochs) == (1e-3, 0, 20)
    assert default_of("patience") == 5


def test_config_is_frozen_and_replace_validates_again():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    assert cfg.replace(epochs=3).epochs == 3
    with pytest.raises(UserError, match="invalid --epochs 0"):
        cfg.replace(epochs=0)


def test_user_model_is_recognised_by_its_import_path():
    assert Config(model="mypkg.models:Net").is_user_model
    assert not Config(model="mlp").is_user_model


def test_to_dict_holds_every_key_but_resume():
    data = Config(resume="runs/x").to_dict()
    assert set(data) == set(config_keys()) - {"resume"}


def test_flags_override_file_values():
    cfg = build_config({"epochs": 7, "lr": 0.01, "optimizer": "sgd"}, {"epochs": 3})
    assert (cfg.epochs, cfg.lr, cfg.optimizer) == (3, 0.01, "sgd")


def test_hyphenated_keys_are_accepted():
    cfg = build_config({"batch-size": 32, "n-saved": 4}, {"weight-decay": 0.1})
    assert (cfg.batch_size, cfg.n_saved, cfg.weight_decay) == (32, 4, 0.1)


def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown config key 'epoch'; valid keys are: dataset, target"):
        build_config({"epoch": 3}, {})


def test_numbers_written_as_yaml_strings_are_coerced():
    # PyYAML reads 1e-3 (no dot) as a string; the config accepts it as a number.
    cfg = build_config({"lr": "1e-3", "epochs": "4", "time_limit": "1h30m"}, {})
    assert (cfg.lr, cfg.epochs, cfg.time_limit) == (1e-3, 4, 5400.0)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"epochs": "many"}, r"invalid --epochs 'many': expected an integer"),
        ({"epochs": 2.5}, r"invalid --epochs 2.5: expected an integer"),
        ({"lr": "fast"}, r"invalid --lr 'fast': expected a number"),
        ({"batch_size": True}, r"invalid --batch-size True: expected a number"),
        ({"lr": [0.1]}, r"invalid --lr \[0.1\]: expected a number"),
        ({"time_limit": "soon"}, r"invalid --time-limit 'soon': use a duration such as 3h30m"),
    ],
)
def test_bad_file_values_fail_clearly(values, match):
    with pytest.raises(UserError, match=match):
        build_config(values, {})


def test_integer_target_from_yaml_is_a_column_index():
    assert build_config({"target": 0}, {}).target == "0"


@pytest.mark.parametrize(
    "text, seconds",
    [("120", 120.0), ("2.5", 2.5), ("45s", 45.0), ("90m", 5400.0), ("3h30m", 12600.0), ("1h2m3s", 3723.0),
     (" 1H ", 3600.0), ("0.5h", 1800.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "3x", "1h30", "m5", "1.2.3s"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(UserError, match=r"invalid --time-limit .*: use a duration such as 3h30m, 90m, 45s or seconds"):
        parse_duration(text)


@pytest.mark.parametrize(
    "dataset, name",
    [
        ("digits", "digits"),
        ("csv:data/train.csv", "train.csv"),
        ("npz:/abs/path/x.npz", "x.npz"),
        ("mypkg.data:get_dataset", "mypkg.data-get_dataset"),
        ("csv:weird name!.csv", "csv-weird-name-.csv"),
        ("csv:data/...", "run"),
    ],
)
def test_default_output_dir(dataset, name):
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_output_dir(dataset, now) == str(Path("runs") / f"{name}-20260102-030405")


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    cfg = Config(dataset="csv:data.csv", target="label", task="regression", model="mlp", epochs=3, batch_size=16,
                 lr=0.05, optimizer="sgd", weight_decay=1e-4, lr_schedule="cosine", seed=7, patience=0,
                 n_saved=3, output_dir="runs/x", device="cpu", progress=False, clip_grad_norm=1.5, time_limit=60.0,
                 in_memory=False)
    path = tmp_path / "config.yaml"
    save_yaml(cfg, path)
    assert build_config(load_yaml(path), {}) == cfg


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"config file '.*nope.yaml' does not exist; pass an existing YAML file to --config"):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_malformed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1\n")
    with pytest.raises(UserError, match=r"is not valid YAML \(.*\); fix the file"):
        load_yaml(path)


def test_load_yaml_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"must hold a mapping of keys to values"):
        load_yaml(path)


def test_load_yaml_empty_file_is_an_empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_yaml(path) == {}
