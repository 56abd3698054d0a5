"""The built-in models. Modules only: no I/O here."""

from __future__ import annotations

import torch
from torch import nn


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
