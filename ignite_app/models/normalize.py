"""Pixel normalisation as part of the model, so that every checkpoint, ``evaluate``, ``predict`` and export carry it.

An image model trained on ``imagefolder:`` data takes pixels as they are stored (0..255, uint8 or
float) and normalises them with the training split's per-channel mean and std, kept as buffers.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

MEAN_KEY, STD_KEY = "pixel_mean", "pixel_std"


class PixelNormalize(nn.Module):
    """``model((x / 255 - mean) / std)``, with ``mean`` and ``std`` per channel."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(MEAN_KEY, mean.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer(STD_KEY, std.detach().float().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.float() / 255.0 - self.pixel_mean) / self.pixel_std)


def with_pixel_normalize(model: nn.Module, splits: Any) -> nn.Module:
    """``model`` wrapped in :class:`PixelNormalize` when ``splits`` are images with statistics, else unchanged."""
    mean, std = getattr(splits, MEAN_KEY, None), getattr(splits, STD_KEY, None)
    return model if mean is None or std is None else PixelNormalize(model, mean, std)


def wrap_for_weights(model: nn.Module, weights: Mapping[str, Any]) -> nn.Module:
    """``model`` wrapped in :class:`PixelNormalize` when the saved ``weights`` hold its statistics (loading a checkpoint)."""
    if MEAN_KEY not in weights or STD_KEY not in weights:
        return model
    channels = int(torch.as_tensor(weights[MEAN_KEY]).numel())
    return PixelNormalize(model, torch.zeros(channels), torch.ones(channels))


def model_name(model: nn.Module) -> str:
    """The class name a user knows: the wrapped model's, marked when pixels are normalised in front of it."""
    if isinstance(model, PixelNormalize):
        return f"{type(model.model).__name__} (+ pixel normalisation)"
    return type(model).__name__
