"""Built-in models sized from the data, the user's own model by import path, and the fit check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ignite_app.data.sources import DataSpec
from ignite_app.errors import UserError
from ignite_app.models import CNN, MLP, build_model, check_model_fits

IMAGES = DataSpec("classification", (3, 12, 10), 5)
VECTORS = DataSpec("regression", (7,), 2)


def test_mlp_is_sized_from_the_data():
    model = build_model("mlp", IMAGES)
    assert isinstance(model, MLP)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert (linears[0].in_features, linears[-1].out_features) == (3 * 12 * 10, 5)
    assert model(torch.zeros(4, 3, 12, 10)).shape == (4, 5)


def test_cnn_is_sized_from_the_data():
    model = build_model("cnn", IMAGES)
    assert isinstance(model, CNN)
    assert model.features[0].in_channels == 3 and model.head[-1].out_features == 5
    assert model(torch.zeros(2, 3, 12, 10)).shape == (2, 5)


@pytest.mark.parametrize("size", [(1, 8, 8), (3, 32, 32), (1, 5, 5)])
def test_cnn_accepts_any_image_size(size):
    assert build_model("cnn", DataSpec("classification", size, 10))(torch.zeros(2, *size)).shape == (2, 10)


@pytest.mark.parametrize("spec, cls", [(IMAGES, CNN), (VECTORS, MLP)])
def test_auto_picks_cnn_for_images_and_mlp_otherwise(spec, cls):
    assert type(build_model("auto", spec)) is cls


def test_cnn_on_non_image_data_says_to_use_mlp():
    with pytest.raises(UserError, match=r"--model cnn needs image-shaped samples \(channels, height, width\), "
                                        r"but this data has shape \(7,\); use --model mlp"):
        build_model("cnn", VECTORS)


USER_MODELS = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(7, 2)
        def forward(self, x):
            return self.lin(x)

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()

    class Exploding(nn.Module):
        def __init__(self):
            raise RuntimeError("weights file not found")

    class NotAModule:
        pass

    make_net = Net
"""


def test_user_model_is_built_with_no_arguments(user_module):
    name = user_module(USER_MODELS)
    model = build_model(f"{name}:Net", VECTORS)
    assert type(model).__name__ == "Net" and type(model).__module__ == name
    assert model(torch.zeros(3, 7)).shape == (3, 2)
    assert type(build_model(f"{name}:make_net", VECTORS)).__name__ == "Net"


@pytest.mark.parametrize(
    "attr, match",
    [
        ("NeedsArgs", r"--model {name}:NeedsArgs needs argument 'width': pass --model-arg width=VALUE"),
        ("Exploding", r"--model {name}:Exploding: Exploding\(\) failed \(RuntimeError: weights file not found\)"),
        ("NotAModule", r"--model {name}:NotAModule is not a torch.nn.Module subclass"),
        ("Missing", r"--model {name}:Missing: module '{name}' has no attribute 'Missing'"),
    ],
)
def test_user_model_failures_are_user_errors(user_module, attr, match):
    name = user_module(USER_MODELS)
    with pytest.raises(UserError, match=match.format(name=name)):
        build_model(f"{name}:{attr}", VECTORS)


def test_user_model_module_not_found(user_module):
    with pytest.raises(UserError, match=r"--model nosuchpkg.nets:Net: cannot import 'nosuchpkg.nets'"):
        build_model("nosuchpkg.nets:Net", VECTORS)


def test_check_model_fits_accepts_a_fitting_model():
    model = MLP(7, 2)
    model.train()
    check_model_fits(model, VECTORS, torch.zeros(2, 7))
    assert model.training  # the check restores the mode it found


def test_check_model_fits_catches_a_wrong_input_shape():
    model = MLP(5, 2)
    with pytest.raises(UserError, match=r"the model does not accept inputs of shape \(7,\) from this dataset "
                                        r"\(.*\); choose a model that fits the data"):
        check_model_fits(model, VECTORS, torch.zeros(2, 7))
    assert model.training


@pytest.mark.parametrize(
    "spec, out, match",
    [
        (DataSpec("classification", (7,), 10), 3,
         r"the model outputs \(2, 3\) per batch but this classification data needs \(2, 10\) \(10 classes\); adjust the model"),
        (VECTORS, 1, r"the model outputs \(2, 1\) per batch but this regression data needs \(2, 2\) \(2 targets\)"),
    ],
)
def test_check_model_fits_catches_a_wrong_output_width(spec, out, match):
    with pytest.raises(UserError, match=match):
        check_model_fits(nn.Linear(7, out), spec, torch.zeros(2, 7))


def test_check_model_fits_catches_a_non_tensor_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(UserError, match=r"the model outputs tuple per batch but this regression data needs \(2, 2\)"):
        check_model_fits(Pair(), VECTORS, torch.zeros(2, 7))


class _Frozen(nn.Linear):
    def __init__(self) -> None:
        super().__init__(7, 2)
        self.requires_grad_(False)


class _Detached(nn.Linear):
    def forward(self, x):
        return super().forward(x).detach()


class _Integers(nn.Linear):
    def forward(self, x):
        return super().forward(x).long()


class _NoParameters(nn.Module):
    def forward(self, x):
        return x[:, :2]


@pytest.mark.parametrize("model, match", [
    (_Frozen(), r"^the model has no trainable parameters \(none, or all with requires_grad=False\); give it parameters to train$"),
    (_NoParameters(), r"^the model has no trainable parameters"),
    (_Detached(7, 2), r"^the model's output does not depend on its trainable parameters \(is it detached, or computed under no_grad\?\)"),
    (_Integers(7, 2), r"^the model outputs int64 values, but the loss needs floating-point outputs"),
])
def test_check_model_fits_refuses_a_model_the_step_could_not_train(model, match):
    model.train()
    with pytest.raises(UserError, match=match):
        check_model_fits(model, VECTORS, torch.zeros(2, 7))
    assert model.training


def test_check_model_fits_names_a_dtype_mismatch():
    with pytest.raises(UserError, match=r"the dataset gives float64 inputs but the model's parameters are float32; "
                                        r"return float32 tensors from the dataset"):
        check_model_fits(MLP(7, 2), VECTORS, torch.zeros(2, 7, dtype=torch.float64))
