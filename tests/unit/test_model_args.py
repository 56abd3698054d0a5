"""Models with arguments: --model-arg and model_args:, the arguments the data fills in, and rebuilding the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import FAST, assert_one_error_line, invoke_app
from ignite_app.config import Config, build_config, load_yaml, parse_model_args
from ignite_app.data.sources import DataSpec
from ignite_app.errors import UserError
from ignite_app.models import MLP, build_model
from ignite_app.models.args import resolve_model_args

IMAGES = DataSpec("classification", (1, 8, 8), 10)
VECTORS = DataSpec("regression", (7,), 2)

pytestmark = pytest.mark.usefixtures("torch_threads")

USER_MODELS = """
    import torch
    from torch import nn

    class Wide(nn.Module):
        def __init__(self, in_channels, width, num_classes, scale=1.0, layers=(4,)):
            super().__init__()
            self.width, self.scale, self.layers = width, scale, layers
            self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
            self.head = nn.Linear(width, num_classes)
        def forward(self, x):
            return self.head(self.conv(x).mean(dim=(2, 3))) * self.scale

    def make_wide(width, num_classes, in_chans=1):
        return Wide(in_chans, width, num_classes)

    def not_a_model(width):
        return width
"""


# --- filling and checking arguments ----------------------------------------------------------

def test_data_determined_arguments_are_filled_under_the_signature_names(user_module):
    name = user_module(USER_MODELS)
    model = build_model(f"{name}:Wide", IMAGES, {"width": 6})
    assert (model.conv.in_channels, model.width, model.head.out_features) == (1, 6, 10)
    factory = build_model(f"{name}:make_wide", IMAGES, {"width": 3})
    assert (factory.conv.in_channels, factory.head.out_features) == (1, 10)


def test_given_arguments_win_over_the_data(user_module):
    name = user_module(USER_MODELS)
    assert build_model(f"{name}:Wide", IMAGES, {"width": 2, "num_classes": 4}).head.out_features == 4


def test_a_torch_class_with_required_arguments_needs_no_wrapper():
    model = build_model("torch.nn:Linear", VECTORS, {"bias": False})
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (7, 2) and model.bias is None


def test_builtin_models_take_arguments_too():
    model = build_model("mlp", IMAGES, {"hidden": [32], "dropout": 0.0})
    assert isinstance(model, MLP)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 10]


def test_a_misspelt_argument_lists_the_accepted_names(user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(UserError, match=rf"^--model {name}:Wide takes no argument 'widht'; it accepts: "
                                        r"in_channels, width, num_classes, scale, layers$"):
        build_model(f"{name}:Wide", IMAGES, {"widht": 3})


def test_a_missing_required_argument_says_how_to_pass_it(user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(UserError, match=rf"--model {name}:Wide needs argument 'width': pass --model-arg width=VALUE"):
        build_model(f"{name}:Wide", IMAGES)


def test_a_callable_that_returns_no_module_is_refused(user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(UserError, match=r"is not a torch.nn.Module subclass \(it returned int\)"):
        build_model(f"{name}:not_a_model", IMAGES, {"width": 3})


def test_a_failing_call_shows_the_arguments():
    with pytest.raises(UserError, match=r"--model torch.nn:Linear: Linear\(in_features=7, bias=False, out_features=-2\) "
                                        r"failed \(RuntimeError: .*\); fix the --model-arg values"):
        build_model("torch.nn:Linear", VECTORS, {"bias": False, "out_features": -2})


def test_kwargs_callables_get_no_data_arguments_they_did_not_name():
    def factory(**kwargs):
        assert "num_classes" not in kwargs
        return nn.Linear(7, 2)

    assert resolve_model_args(factory, {"anything": 1}, VECTORS, "f") == {"anything": 1}


def test_timm_create_model_builds_with_the_data_filled_in():
    timm = pytest.importorskip("timm")
    model = build_model("timm:create_model", DataSpec("classification", (3, 32, 32), 7), {"model_name": "resnet18"})
    assert isinstance(model, nn.Module) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UserError, match="pretrained=true would download weights"):
        build_model("timm:create_model", IMAGES, {"model_name": "resnet18", "pretrained": True})
    assert timm is not None


# --- the config: values, immutability, YAML ------------------------------------------------------

def test_model_arg_values_are_read_as_yaml_scalars_and_lists():
    assert parse_model_args(["width=8", "scale=0.5", "flag=true", "name=resnet18", "layers=[2, 3]", "none=null"]) == {
        "width": 8, "scale": 0.5, "flag": True, "name": "resnet18", "layers": [2, 3], "none": None}


@pytest.mark.parametrize("text, match", [
    ("width", r"invalid --model-arg 'width': write it as name=value"),
    ("2x=3", r"invalid --model-arg '2x=3': write it as name=value"),
    ("layers=[&a [1, 2], *a]", r"invalid --model-arg layers: the value is not a YAML scalar or list \(anchors and aliases"),
])
def test_bad_model_args_are_user_errors(text, match):
    with pytest.raises(UserError, match=match):
        parse_model_args([text])


def test_model_args_are_frozen_and_saved_as_a_mapping(tmp_path):
    cfg = Config(model_args={"width": 8, "layers": [2, 3]})
    assert cfg.model_args == (("layers", (2, 3)), ("width", 8))
    with pytest.raises(TypeError):
        cfg.model_args[0][1][0] = 5  # type: ignore[index]
    assert cfg.to_dict()["model_args"] == {"layers": [2, 3], "width": 8}
    assert hash(cfg.model_args)
    merged = build_config({"model_args": {"width": 8}}, {"model_args": {"layers": [2, 3]}})  # flags add to the file
    assert merged.model_args == cfg.model_args


def test_mappings_inside_model_args_are_refused():
    with pytest.raises(UserError, match=r"invalid model argument opts=\{'a': 1\}: use a number, string"):
        Config(model_args={"opts": {"a": 1}})


def test_a_config_file_with_yaml_aliases_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model_args: &a {width: 3}\nother: *a\n")
    with pytest.raises(UserError, match="anchors and aliases"):
        load_yaml(path)


# --- end to end: train, resume, evaluate, predict, export rebuild the model ----------------------

def train(*args: str):
    """``ignite-app train`` in-process."""
    return invoke_app("train", *FAST, "--epochs", "1", "--batch-size", "128", *args)


def test_a_user_model_with_required_arguments_trains_and_is_rebuilt_everywhere(user_module, tmp_path):
    name = user_module(USER_MODELS)
    run = tmp_path / "run"
    result = train("--model", f"{name}:Wide", "--model-arg", "width=5", "--model-arg", "scale=0.5",
                   "--output-dir", str(run))
    assert result.exit_code == 0, result.output + result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model_args"] == {"scale": 0.5, "width": 5}
    weights = torch.load(next((run / "checkpoints").glob("checkpoint_*.pt")), weights_only=True)["model"]
    assert weights["conv.weight"].shape == (5, 1, 3, 3) and weights["head.weight"].shape == (10, 5)

    resumed = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "2", "--trust-config")
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    assert "resuming from" in resumed.stdout
    evaluated = invoke_app("evaluate", str(run), "--json", "--trust-config")
    assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
    assert 0.0 <= json.loads(evaluated.stdout)["accuracy"] <= 1.0

    from sklearn.datasets import load_digits

    np.savez(tmp_path / "x.npz", x=(load_digits().images[:5] / 16.0).astype(np.float32)[:, None])
    predicted = invoke_app("predict", str(run), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "p.npz"),
                           "--trust-config")
    assert predicted.exit_code == 0, predicted.output + predicted.stderr
    assert np.load(tmp_path / "p.npz")["probabilities"].shape == (5, 10)
    exported = invoke_app("export", str(run), "--output", str(tmp_path / "m.safetensors"), "--trust-config")
    assert exported.exit_code == 0, exported.output + exported.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["model_args"]) == {"scale": 0.5, "width": 5}
        assert f.get_tensor("conv.weight").shape == (5, 1, 3, 3)


def test_model_args_from_the_yaml_config_and_changing_them_on_resume_is_refused(user_module, tmp_path):
    name = user_module(USER_MODELS)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model: {name}:make_wide\nmodel_args:\n  width: 3\n")
    run = tmp_path / "run"
    result = train("--config", str(config), "--output-dir", str(run))
    assert result.exit_code == 0, result.output + result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model_args"] == {"width": 3}
    changed = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "2", "--model-arg", "width=4",
                         "--trust-config")
    assert_one_error_line(changed.exit_code, changed.stderr, changed.output, "--model-args cannot change when resuming")


def test_a_misspelt_model_arg_is_one_error_line_and_writes_nothing(user_module, tmp_path):
    name = user_module(USER_MODELS)
    result = train("--model", f"{name}:Wide", "--model-arg", "widht=5", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output,
                          "takes no argument 'widht'; it accepts: in_channels, width, num_classes, scale, layers")
    assert not (tmp_path / "run").exists()
