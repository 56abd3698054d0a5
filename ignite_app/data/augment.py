"""Augmentation of whole uint8 image batches on the training device, reproducible sample by sample.

Each sample's random numbers come from a counter-based hash of (seed, epoch, dataset index, draw),
not from a generator's state: the same sample in the same epoch is augmented the same way whatever
batch it lands in, on any device, and a run resumed mid-epoch replays exactly what it would have.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ignite_app.data.loaders import EpochSampler

MASK32 = 0xFFFFFFFF
RESIZED_SCALE = (0.35, 1.0)  # area kept by a random resized crop
RESIZED_RATIO = (3 / 4, 4 / 3)


def mix32(h: Any) -> Any:
    """MurmurHash3's 32-bit finaliser, for a Python int or an int64 tensor of values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def uniforms(seed: int, epoch: int, index: torch.Tensor, draw: int) -> torch.Tensor:
    """One float32 in [0, 1) per dataset index: draw number ``draw`` of that sample in that epoch."""
    base = mix32((mix32(seed & MASK32) ^ (epoch * 0x27D4EB2F + draw * 0x165667B1)) & MASK32)
    h = mix32((index.long() * 0x9E3779B1 + base) & MASK32)
    h = mix32(h ^ base)
    return (h >> 8).float() / float(1 << 24)  # 24 bits: exact in float32, never 1.0


class Augment:
    """Random crop with zero padding, horizontal flip and random resized crop of (N, C, H, W) uint8 batches."""

    def __init__(self, names: tuple[str, ...], seed: int, padding: int | None = None) -> None:
        self.names, self.seed = names, seed
        self.padding = padding

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The augmented batch, uint8 like ``x``; ``index`` holds each sample's dataset index."""
        index = index.to(x.device)
        if "resized-crop" in self.names:
            x = self.resized_crop(x, index, epoch)
        if "crop" in self.names:
            x = self.crop(x, index, epoch)
        if "flip" in self.names:
            x = self.flip(x, index, epoch)
        return x

    def crop(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Pad by ``padding`` (default an eighth of the width) and cut a window of the original size."""
        n, _, h, w = x.shape
        pad = self.padding if self.padding is not None else max(1, w // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = (uniforms(self.seed, epoch, index, 0) * (2 * pad + 1)).long()
        dx = (uniforms(self.seed, epoch, index, 1) * (2 * pad + 1)).long()
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    def flip(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Mirror left-right with probability 1/2."""
        mirror = (uniforms(self.seed, epoch, index, 2) < 0.5)[:, None, None, None]
        return torch.where(mirror, x.flip(-1), x)

    def resized_crop(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """A random box (35-100% of the area, aspect 3/4 to 4/3) resized back to the full size, bilinear."""
        area = RESIZED_SCALE[0] + uniforms(self.seed, epoch, index, 3) * (RESIZED_SCALE[1] - RESIZED_SCALE[0])
        log_lo, log_hi = math.log(RESIZED_RATIO[0]), math.log(RESIZED_RATIO[1])
        ratio = torch.exp(log_lo + uniforms(self.seed, epoch, index, 4) * (log_hi - log_lo))
        width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        cx = (uniforms(self.seed, epoch, index, 5) * 2 - 1) * (1 - width)
        cy = (uniforms(self.seed, epoch, index, 6) * 2 - 1) * (1 - height)
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, cx, height, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)


class AugmentedLoader:
    """A training loader whose batches are moved to ``device`` and augmented there.

    It reads each batch's dataset indices from the sampler, which both loaders follow in order,
    ``batch_size`` at a time (the last batch may be short).
    """

    def __init__(self, loader: Any, sampler: EpochSampler, batch_size: int, augment: Augment, device: torch.device) -> None:
        self.loader, self.sampler, self.batch_size = loader, sampler, batch_size
        self.augment, self.device = augment, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, epoch = self.sampler.indices(), self.sampler.epoch  # after EPOCH_STARTED chose the order
        non_blocking = self.device.type == "cuda"
        for i, (x, y) in enumerate(self.loader):
            x = x.to(self.device, non_blocking=non_blocking)
            yield self.augment(x, indices[i * self.batch_size : i * self.batch_size + len(x)], epoch), y
