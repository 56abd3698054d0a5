"""Batches in a reproducible order: a resumable sampler, an in-memory loader, and DataLoaders.

The training order depends only on (seed, epoch), so a resumed run sees the same batches
as an uninterrupted one, and can start in the middle of an epoch.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ignite_app.data.arrays import StreamingArrayDataset
from ignite_app.data.sources import ArrayDataset, collate_batch


class EpochSampler(Sampler[int]):
    """Sample indices for one process in an order fixed by ``(seed, epoch)``.

    With ``shuffle`` the order is a fresh permutation each epoch; with several processes each
    rank takes every ``world_size``-th index (training pads to equal shards so that every rank
    runs the same number of steps; evaluation does not pad, so no sample counts twice).
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch's order, skipping the first ``start`` indices of this rank."""
        self.epoch, self.start = epoch, start

    def epoch_order(self) -> torch.Tensor:
        """Every process's indices for the current epoch, before sharding (subclasses draw other orders)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return torch.randperm(self.size, generator=gen)
        return torch.arange(self.size)

    def shard(self) -> torch.Tensor:
        """This rank's indices for the whole current epoch."""
        order = self.epoch_order()
        if self.world_size > 1:
            if self.pad:
                total = math.ceil(self.size / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - self.size]])
            order = order[self.rank :: self.world_size]
        return order

    def indices(self) -> torch.Tensor:
        """The indices still to visit in the current epoch."""
        return self.shard()[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return max(0, len(self.shard()) - self.start)

    def full_length(self) -> int:
        """Samples per epoch for this rank, ignoring ``start``."""
        return len(self.shard())


class InMemoryLoader:
    """Batches sliced from whole tensors: no per-sample fetch and no collation.

    Used for tensor-backed data that fits in memory; the tensors may live on the GPU.
    """

    CHUNK_BYTES = 2**20

    def __init__(self, dataset: ArrayDataset, batch_size: int, sampler: EpochSampler, device: torch.device | None = None):
        self.x = dataset.x if device is None else dataset.x.to(device)
        self.y = dataset.y if device is None else dataset.y.to(device)
        self.batch_size = batch_size
        self.sampler = sampler

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Gather many batches per index_select (each call costs ~25 us on a CPU, as much as a small
        # model's layer), then hand out contiguous views; a chunk holds at most CHUNK_BYTES of inputs (or one batch).
        idx = self.sampler.indices().to(self.x.device)
        sample_bytes = max(1, self.x[:1].numel() * self.x.element_size())
        step = self.batch_size * max(1, self.CHUNK_BYTES // (sample_bytes * self.batch_size))
        for start in range(0, len(idx), step):
            part = idx[start : start + step]
            xs, ys = self.x.index_select(0, part), self.y.index_select(0, part)
            for i in range(0, len(part), self.batch_size):
                yield xs[i : i + self.batch_size], ys[i : i + self.batch_size]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: EpochSampler,
    *,
    in_memory: bool,
    num_workers: int,
    device: torch.device,
    seed: int,
    threads: int | None = None,
) -> InMemoryLoader | DataLoader:
    """An :class:`InMemoryLoader` for tensor data when allowed, else a DataLoader over ``sampler``.

    ``threads``: torch threads in each worker process (torch's default there is 1).
    """
    if isinstance(dataset, IterableDataset):  # issue 13: a stream has no sampler; Ignite keeps its iterator across epochs
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda",
                          generator=torch.Generator().manual_seed(seed))
    if in_memory and isinstance(dataset, ArrayDataset):
        return InMemoryLoader(dataset, batch_size, sampler, device if device.type == "cuda" else None)
    array = isinstance(dataset, (ArrayDataset, StreamingArrayDataset))  # both return whole batches
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_batch if array else None,
        pin_memory=device.type == "cuda",
        # Its own generator, so that creating worker seeds never draws from the global RNG
        # (which would shift dropout masks after a mid-epoch resume).
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        worker_init_fn=functools.partial(set_worker_threads, threads) if threads and num_workers else None,
    )


def set_worker_threads(threads: int, worker_id: int) -> None:
    """``worker_init_fn`` of DataLoader workers: the run's thread count instead of torch's 1 per worker."""
    torch.set_num_threads(threads)


def epoch_length(sampler: EpochSampler, batch_size: int) -> int:
    """Iterations in one full epoch for this rank."""
    return math.ceil(sampler.full_length() / batch_size)
