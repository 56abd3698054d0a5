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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ignite_app.config import Config
from ignite_app.data.sources import SPLIT_SEED, ArrayDataset, DataSpec, Splits
from ignite_app.errors import UserError

STATS_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ArrayLayout:
    """Where a C-ordered array lies in a file: the byte offset of its first row, its dtype and shape."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]


def npy_layout(path: Path) -> ArrayLayout:
    """The layout of the array in a ``.npy`` file (only its header is read)."""
    array = np.load(path, mmap_mode="r")
    return ArrayLayout(Path(path), int(array.offset), array.dtype, tuple(array.shape))


class StreamingArrayDataset(Dataset):
    """Rows ``rows`` of the array in a ``.npy`` file (or at ``layout``), read from disk on each fetch; targets in memory."""

    def __init__(self, path: Path, rows: np.ndarray, targets: torch.Tensor, layout: ArrayLayout | None = None) -> None:
        layout = layout or npy_layout(path)
        self.path, self.offset = layout.path, layout.offset
        self.dtype, self.sample_shape = layout.dtype, tuple(layout.shape[1:])
        self.sample_bytes = int(np.prod(self.sample_shape)) * layout.dtype.itemsize
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
        return as_model_input(torch.from_numpy(self.read(indices))), self.y[torch.as_tensor(indices)]

    def read(self, indices: list[int]) -> np.ndarray:
        """The stored rows at dataset positions ``indices``, as they are on disk."""
        fd = self._file()
        out = np.empty((len(indices), *self.sample_shape), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        for i, index in enumerate(indices):
            start = self.offset + int(self.rows[index]) * self.sample_bytes
            flat[i] = np.frombuffer(os.pread(fd, self.sample_bytes, start), dtype=np.uint8)
        return out

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a DataLoader worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


def as_model_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels stay uint8 (the model normalises them); every other dtype becomes float32."""
    return x if x.dtype in (torch.uint8, torch.float32) else x.float()


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
    stream = StreamingArrayDataset(path, rows, targets)
    if not in_memory:
        return stream
    # Read with pread, not through the memory map: mapped pages would count as ours next to the copy (2x the peak).
    step = max(1, STATS_CHUNK_BYTES // stream.sample_bytes)
    x = as_model_input(torch.from_numpy(np.empty((len(rows), *stream.sample_shape), dtype=stream.dtype)))
    for start in range(0, len(rows), step):
        x[start : start + step] = stream.__getitems__(list(range(start, min(start + step, len(rows)))))[0]
    return ArrayDataset(x, targets)


def channel_stats(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of (N, C, H, W) uint8 samples scaled to [0, 1], read in chunks.

    Exact: a 256-bin histogram per channel (``bincount`` is ~10x faster than summing float64 squares).
    """
    x0 = data[0][0]
    channels, per_sample = x0.shape[0], max(1, x0.numel() * x0.element_size())
    step = max(1, STATS_CHUNK_BYTES // per_sample)
    counts = torch.zeros(channels, 256, dtype=torch.int64)
    for start in range(0, len(data), step):
        x = _fetch(data, list(range(start, min(start + step, len(data)))))
        for c in range(channels):
            counts[c] += torch.bincount(x[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts[0].sum().double()
    mean = (counts.double() * values).sum(dim=1) / total
    var = (counts.double() * values * values).sum(dim=1) / total - mean * mean
    std = var.clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel divides by 1e-3, not 0
    return mean.float(), std.float()


def _fetch(data: Dataset, indices: list[int]) -> torch.Tensor:
    if hasattr(data, "__getitems__"):
        return data.__getitems__(indices)[0]
    return torch.stack([torch.as_tensor(data[i][0]) for i in indices])


def load_npy_splits(cfg: Config, warn: Callable[[str], None] | None = None) -> Splits:
    """``--dataset npy:DIR``: ``DIR/x.npy`` (read through a memory map) and ``DIR/y.npy``, split with a fixed seed."""
    folder = Path(cfg.dataset[len("npy:"):])
    x_path, y = folder / "x.npy", _read_targets(folder / "y.npy")
    x = _open_inputs(x_path)
    if len(x) != len(y) or len(x) < 2:
        raise UserError(f"npy:{folder}: x.npy has {len(x)} samples and y.npy {len(y)}; give one target per sample, at least 2")
    task, targets, outputs = _task_targets(y, cfg.task, cfg.dataset)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    n_val = max(1, int(round(len(x) * cfg.val_fraction)))
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])  # sorted: the disk is read in order
    fits = fits_in_memory(x_path, len(x), cfg.memory_budget_mb)
    if not fits:
        (warn or _stderr)(f"npy:{folder}: x.npy ({x.nbytes / 2**20:.0f} MiB) is over the memory budget "
                          f"({memory_budget(cfg.memory_budget_mb) / 2**20:.0f} MiB): streaming it batch by batch")
    train = array_dataset(x_path, train_rows, targets[torch.from_numpy(train_rows)], fits)
    val = array_dataset(x_path, val_rows, targets[torch.from_numpy(val_rows)], fits)
    spec = DataSpec(task, tuple(x.shape[1:]), outputs)
    if x.dtype == np.uint8 and x.ndim == 4:  # images as stored pixels: normalised inside the model, like imagefolder
        mean, std = channel_stats(train)
        return PixelSplits(train, val, spec, pixel_mean=mean, pixel_std=std)
    if cfg.augment != "off":
        raise UserError(f"{cfg.dataset}: --augment needs uint8 images in x.npy, shaped (samples, channels, height, width)")
    return Splits(train, val, spec)


@dataclass(frozen=True)
class PixelSplits(Splits):
    """:class:`Splits` of uint8 (N, C, H, W) pixels, with the training split's per-channel mean and std in [0, 1]."""

    pixel_mean: torch.Tensor | None = None  # defaults only because Splits' last fields have them; always set
    pixel_std: torch.Tensor | None = None


def _open_inputs(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"npy: {str(path)!r} does not exist; save the inputs with numpy.save as x.npy")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a bad header, an object array, ...
        raise UserError(f"npy: {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); write it with numpy.save") from None
    if x.ndim < 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"npy: {str(path)!r} must be a numeric array of shape (samples, features...), not {x.dtype} {x.shape}")
    return x


def _read_targets(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"npy: {str(path)!r} does not exist; save the targets with numpy.save as y.npy")
    try:
        y = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"npy: {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); write it with numpy.save") from None
    if y.ndim == 0 or not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all():
        raise UserError(f"npy: {str(path)!r} must hold one finite number (or row) per sample")
    return y


def _task_targets(y: np.ndarray, task: str, name: str) -> tuple[str, torch.Tensor, int]:
    """Integer labels of one dimension are classes (unless --task regression); anything else is regressed."""
    labels = y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
    if task == "classification" and not (labels and y.min() >= 0):
        raise UserError(f"{name}: --task classification needs y.npy of non-negative integer labels")
    if task != "regression" and labels and y.min() >= 0:
        return "classification", torch.from_numpy(y.astype(np.int64)), max(2, int(y.max()) + 1)
    values = torch.from_numpy(y.astype(np.float32).reshape(len(y), -1))  # (N,) -> (N, 1) like the model output
    return "regression", values, int(values.shape[1])


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
