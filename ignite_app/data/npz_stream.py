"""``npz:`` files larger than the memory budget, streamed batch by batch like ``npy:DIR``.

The rule: x of an ``.npz`` file is read into memory (and preprocessed there, :mod:`ignite_app.data.sources`)
when that fits the memory budget (the stored values plus ``IN_MEMORY_BYTES_PER_VALUE`` per value for their
float copies), or when it is a (samples, features) table, whose standardisation and
median fill need every training row at once. Samples of more dimensions (images, sequences) over the
budget stay on disk: their preprocessing is per value (``(x - shift) / scale`` with scalars, in practice
0 and 1), so :class:`NpzStreamDataset` applies it to each batch and the batches are bit-identical to the
in-memory ones. NumPy cannot memory-map a member of a zip file, but ``numpy.savez`` stores its members
uncompressed, as plain ``.npy`` files inside the zip: their rows are read in place with ``pread``. A
compressed member (``numpy.savez_compressed``) cannot be read that way and is refused with one error.
"""

from __future__ import annotations

import struct
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ignite_app.config import Config
from ignite_app.data.arrays import STATS_CHUNK_BYTES, ArrayLayout, StreamingArrayDataset, memory_budget
from ignite_app.data.preprocess import NumericStep, Preprocessor, RawRows, fit, handle_missing, rows_from_arrays
from ignite_app.data.sources import Splits, check_npz_arrays, check_npz_pair, split_rows
from ignite_app.errors import UserError

LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip local file header: signature, ..., name length, extra length
# Bytes per value that the in-memory path holds besides the stored ones: the float64 rows, the float64 copy
# of the training split and the float32 inputs (measured: 51 MiB of uint8 took 1.2 GiB more peak RSS).
IN_MEMORY_BYTES_PER_VALUE = 20


class NpzStreamDataset(StreamingArrayDataset):
    """Rows of an uncompressed ``.npz`` member, read per batch and preprocessed exactly as the in-memory path does."""

    def __init__(self, layout: ArrayLayout, rows: np.ndarray, targets: torch.Tensor, step: NumericStep) -> None:
        super().__init__(layout.path, rows, targets, layout)
        self.step = step

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as ``Preprocessor.inputs`` makes it: float64 values, then float32, then the numeric step."""
        with torch.no_grad():
            x = self.step(torch.as_tensor(self.read(indices).astype(np.float64), dtype=torch.float32))
        return x, self.y[torch.as_tensor(indices)]


def member_layout(path: Path, member: str) -> tuple[ArrayLayout, bool, bool]:
    """The layout of ``member`` (``x``) inside the zip, whether it is compressed, and whether it is Fortran-ordered."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{member}.npy")
        with archive.open(info) as f:  # the .npy header, decompressed if need be
            shape, fortran, dtype = _npy_header(f)
            header_bytes = f.tell()
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        signature, name_length, extra_length = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    data_start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
    compressed = info.compress_type != zipfile.ZIP_STORED
    if not compressed and header_bytes + int(np.prod(shape)) * dtype.itemsize > info.file_size:
        raise ValueError(f"{member}.npy is shorter than its header says")
    return ArrayLayout(Path(path), data_start + header_bytes, dtype, tuple(shape)), compressed, fortran


def _npy_header(f: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version} is not supported")


def streamed_npz_splits(cfg: Config, stored: Preprocessor | None, warn: Callable[[str], None] | None = None) -> Splits | None:
    """``npz:FILE`` as streamed :class:`Splits` when the rule says to stream it, else None (the in-memory path)."""
    path = Path(cfg.dataset[len("npz:"):])
    try:
        layout, compressed, fortran = member_layout(path, "x")
    except Exception:  # no file, no x, not a zip, an object array...: the in-memory reader names the problem
        return None
    values, budget = int(np.prod(layout.shape)), memory_budget(cfg.memory_budget_mb)
    in_memory = values * (layout.dtype.itemsize + IN_MEMORY_BYTES_PER_VALUE)
    if in_memory <= budget or cfg.target is not None or not _numeric(layout.dtype):
        return None
    size = (f"x ({values * layout.dtype.itemsize / 2**20:.1f} MiB stored, about {in_memory / 2**20:.1f} MiB "
            f"preprocessed in memory) is over the memory budget ({budget / 2**20:.1f} MiB)")
    if len(layout.shape) < 3:
        (warn or _stderr)(f"npz:{path}: {size}, but a (samples, features) table is standardised in memory whole")
        return None
    if stored is not None and (stored.kind != "array" or list(stored.sample_shape) != list(layout.shape[1:])):
        return None  # a model trained on other samples: the in-memory reader says how they differ
    if compressed or fortran:
        how = "compressed" if compressed else "stored in Fortran order"
        raise UserError(f"NPZ file {str(path)!r}: {size} and {how}, so it cannot be read batch by batch; "
                        "save it with numpy.savez (not savez_compressed) of a C-ordered array, or as npy:DIR, "
                        "or raise --memory-budget-mb")
    splits = _splits(cfg, stored, layout, _targets(path, layout))
    (warn or _stderr)(f"npz:{path}: {size}: streaming it batch by batch")
    return splits


def _numeric(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.number)) and not np.issubdtype(dtype, np.complexfloating)


def _targets(path: Path, layout: ArrayLayout) -> np.ndarray:
    """y, checked against x as the in-memory reader checks them (x itself is not read)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            y = arrays["y"]
    except Exception as exc:  # no y, an object array, ...
        raise UserError(f"NPZ file {str(path)!r} cannot be read ({exc}); save inputs as x and targets as y "
                        "with numpy.savez") from None
    shape_only = np.broadcast_to(np.zeros((), layout.dtype), layout.shape)  # x's shape and dtype, no memory
    check_npz_pair(shape_only, y, path)
    check_npz_arrays(shape_only, y, path)
    return y


def _splits(cfg: Config, stored: Preprocessor | None, layout: ArrayLayout, y: np.ndarray) -> Splits:
    """``sources.split_rows`` on the row numbers, with x left on disk."""
    name, notes = cfg.dataset, []
    rows = handle_missing(_row_numbers(layout, y), cfg.na if stored is None else stored.na, name, notes)

    def require_finite(rows: RawRows) -> None:
        if not np.isfinite(rows.numeric).all():
            raise UserError(f"dataset {name!r} has NaN or infinite inputs; clean the data")

    def fit_training(train: RawRows, task: str, classes: list[str]) -> Preprocessor:
        return replace(fit(train, task, classes, kind="array", standardize=cfg.standardize, na=cfg.na),
                       sample_shape=list(layout.shape[1:]))

    return split_rows(cfg, stored, rows, notes, fit_training, lambda pre, part: _dataset(layout, pre, part, name),
                      check=require_finite)


def _row_numbers(layout: ArrayLayout, y: np.ndarray) -> RawRows:
    """Rows whose 'features' are (row number, 0), NaN or inf in the second place where x's row has one.

    ``handle_missing`` then drops or refuses exactly the rows it would drop or refuse in memory.
    """
    numeric = np.zeros((len(y), 1, 2))
    numeric[:, 0, 0] = np.arange(len(y))
    if np.issubdtype(layout.dtype, np.floating):
        reader = StreamingArrayDataset(layout.path, np.arange(len(y)), torch.zeros(len(y)), layout)
        step = max(1, STATS_CHUNK_BYTES // max(1, reader.sample_bytes))
        for start in range(0, len(y), step):
            chunk = reader.read(list(range(start, min(start + step, len(y)))))
            chunk = chunk.reshape(len(chunk), -1)
            numeric[start : start + len(chunk), 0, 1] = np.where(np.isnan(chunk).any(axis=1), np.nan,
                                                                  np.where(np.isinf(chunk).any(axis=1), np.inf, 0.0))
    return rows_from_arrays(numeric, y)


def _dataset(layout: ArrayLayout, pre: Preprocessor, rows: RawRows, name: str) -> NpzStreamDataset:
    positions = rows.numeric[:, 0, 0].astype(np.int64)  # the rows' places in x
    return NpzStreamDataset(layout, positions, pre.targets(rows, name), pre.numeric_step)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
