"""Array data on disk (the image cache, ``.npy`` files): in memory when it fits, else streamed batch by batch.

The rule: a split whose arrays, together, take at most the memory budget (``--memory-budget-mb``, else a
quarter of the memory the kernel reports available) is copied into RAM once and batched by
:class:`~ignite_app.data.loaders.InMemoryLoader`. A larger one stays on disk: a DataLoader asks
:class:`StreamingArrayDataset` for each batch, which reads just those rows with ``os.pread``. Those
reads go through the page cache, which the kernel may drop at will: they do not grow the process's
memory, unlike pages of a memory map, which count as resident once touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ignite_app.data.sources import ArrayDataset

STATS_CHUNK_BYTES = 8 * 2**20


class StreamingArrayDataset(Dataset):
    """Rows ``rows`` of the array in a ``.npy`` file, read from disk on each fetch; targets in memory."""

    def __init__(self, path: Path, rows: np.ndarray, targets: torch.Tensor) -> None:
        array = np.load(path, mmap_mode="r")  # only to read the header: shape, dtype, data offset
        self.path, self.offset = Path(path), int(array.offset)
        self.dtype, self.sample_shape = array.dtype, tuple(array.shape[1:])
        self.sample_bytes = int(np.prod(self.sample_shape)) * array.dtype.itemsize
        self.rows = np.asarray(rows, dtype=np.int64)
        self.y = targets
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch: one ``pread`` per row into one buffer."""
        fd = self._file()
        out = np.empty((len(indices), *self.sample_shape), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        for i, index in enumerate(indices):
            start = self.offset + int(self.rows[index]) * self.sample_bytes
            flat[i] = np.frombuffer(os.pread(fd, self.sample_bytes, start), dtype=np.uint8)
        return torch.from_numpy(out), self.y[torch.as_tensor(indices)]

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a DataLoader worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take (``MemAvailable``), or total RAM if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(budget_mb: int | None) -> int:
    """Bytes of array data to hold in memory: ``--memory-budget-mb``, else a quarter of the available memory."""
    return budget_mb * 2**20 if budget_mb is not None else available_memory() // 4


def fits_in_memory(path: Path, rows: int, budget_mb: int | None) -> bool:
    """Whether ``rows`` samples of the ``.npy`` array at ``path`` fit the memory budget."""
    array = np.load(path, mmap_mode="r")
    return rows * array[:1].nbytes <= memory_budget(budget_mb)


def array_dataset(path: Path, rows: np.ndarray, targets: torch.Tensor, in_memory: bool) -> Dataset:
    """Rows of the array file: copied into memory (:class:`ArrayDataset`) or streamed (:class:`StreamingArrayDataset`)."""
    if not in_memory:
        return StreamingArrayDataset(path, rows, targets)
    array = np.load(path, mmap_mode="r")
    x = torch.from_numpy(np.ascontiguousarray(array[rows]))  # fancy indexing copies the rows out of the map
    del array  # unmap: the pages read so far no longer count as ours
    return ArrayDataset(x, targets)


def channel_stats(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of (N, C, H, W) samples scaled to [0, 1], read in chunks."""
    x0 = data[0][0]
    channels, per_sample = x0.shape[0], max(1, x0.numel() * x0.element_size())
    step = max(1, STATS_CHUNK_BYTES // per_sample)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(data), step):
        x = _fetch(data, list(range(start, min(start + step, len(data))))).double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(data) * x0[0].numel()
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel divides by 1e-3, not 0
    return mean.float(), std.float()


def _fetch(data: Dataset, indices: list[int]) -> torch.Tensor:
    if hasattr(data, "__getitems__"):
        return data.__getitems__(indices)[0]
    return torch.stack([torch.as_tensor(data[i][0]) for i in indices])
