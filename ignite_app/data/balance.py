"""Imbalanced classes: inverse-frequency class weights and a balanced, resumable training sampler.

Both read the training split's labels only. The balanced sampler draws each epoch's indices with
replacement, each sample with probability proportional to 1 / (its class's count), from a generator
seeded by (seed, epoch) like :class:`~ignite_app.data.loaders.EpochSampler`: a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ignite_app.data.loaders import EpochSampler
from ignite_app.data.sources import ArrayDataset
from ignite_app.errors import UserError


def training_labels(data: Dataset) -> torch.Tensor:
    """The class label of every sample (tensor datasets at once, others one sample at a time)."""
    if isinstance(data, ArrayDataset):
        return data.y.reshape(-1).long()
    return torch.tensor([int(data[i][1]) for i in range(len(data))], dtype=torch.long)  # type: ignore[arg-type]


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many samples each class has."""
    return torch.bincount(labels, minlength=num_classes)[:num_classes]


def inverse_frequency(counts: torch.Tensor) -> list[float]:
    """``n / (classes * count)`` per class (scikit-learn's "balanced"), 0 for a class absent from training."""
    n, classes = float(counts.sum()), len(counts)
    return [n / (classes * float(c)) if c > 0 else 0.0 for c in counts]


class BalancedEpochSampler(EpochSampler):
    """Each epoch, ``size`` indices drawn with replacement so that every class is equally likely."""

    def __init__(self, labels: torch.Tensor, num_classes: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(labels), seed, shuffle=True, rank=rank, world_size=world_size, pad=True)
        counts = class_counts(labels, num_classes).double()
        self.weights = 1.0 / counts.clamp(min=1)[labels]

    def epoch_order(self) -> torch.Tensor:
        """Draws for this epoch, fixed by (seed, epoch) and the same on every rank."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=gen)


def check_classification(task: str, option: str) -> None:
    """Class weights and balanced sampling only mean something for classification."""
    if task != "classification":
        raise UserError(f"{option} is for classification, but this data is {task}; drop it")
