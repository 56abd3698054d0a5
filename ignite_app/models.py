"""Built-in models and the user's own ``nn.Module`` by import path. Modules only: no I/O here."""

from __future__ import annotations

import math

import torch
from torch import nn

from ignite_app.data import DataSpec
from ignite_app.errors import UserError
from ignite_app.imports import import_object


class MLP(nn.Module):
    """A multilayer perceptron over the flattened input."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small conv net for (channels, height, width) inputs of any size."""

    def __init__(self, in_channels: int, out_features: int, width: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),  # any image size -> (2*width, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (projected, when the shape changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for CIFAR-shaped images (3x32x32, 10 classes by default).

    Builds with no arguments, so ``--model ignite_app.models:ResNet`` trains it; the benchmark's
    ResNet-style workload.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        stages: list[nn.Module] = []
        width = widths[0]
        for i, out in enumerate(widths):
            stages.append(BasicBlock(width, out, stride=1 if i == 0 else 2))  # halve the resolution after stage 1
            width = out
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model(name: str, spec: DataSpec) -> nn.Module:
    """The model ``--model`` names, sized from the data (``auto``: CNN for images, else MLP)."""
    if name == "auto":
        name = "cnn" if spec.is_image else "mlp"
    if name == "mlp":
        return MLP(math.prod(spec.input_shape), spec.num_outputs)
    if name == "cnn":
        if not spec.is_image:
            raise UserError(
                f"--model cnn needs image-shaped samples (channels, height, width), but this data has shape "
                f"{spec.input_shape}; use --model mlp"
            )
        return CNN(spec.input_shape[0], spec.num_outputs)
    return _user_model(name)


def _user_model(path: str) -> nn.Module:
    cls = import_object(path, "--model")
    try:
        model = cls()
    except Exception as exc:
        raise UserError(f"--model {path}: {path.split(':')[1]}() failed ({type(exc).__name__}: {exc}); "
                        "the class must build with no arguments") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {path} is not a torch.nn.Module subclass")
    return model


def check_model_fits(model: nn.Module, spec: DataSpec, sample: torch.Tensor) -> None:
    """Run one sample batch through the model and check the output shape, before any training."""
    param = next(model.parameters(), None)
    if param is not None and sample.is_floating_point() and param.is_floating_point() and sample.dtype != param.dtype:
        got, want = (str(t.dtype).removeprefix("torch.") for t in (sample, param))
        raise UserError(f"the dataset gives {got} inputs but the model's parameters are {want}; "
                        f"return {want} tensors from the dataset")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"the model does not accept inputs of shape {tuple(sample.shape[1:])} from this dataset ({first}); "
            "choose a model that fits the data"
        ) from None
    finally:
        model.train(was_training)
    expected = (sample.shape[0], spec.num_outputs)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"the model outputs {got} per batch but this {spec.task} data needs {expected} "
            f"({spec.num_outputs} {'classes' if spec.task == 'classification' else 'targets'}); adjust the model"
        )
