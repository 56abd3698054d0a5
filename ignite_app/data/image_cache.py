"""Decode an image folder once into a uint8 array file, and find it again on the next run.

The cache is two files in the cache folder: ``images-<size>px.npy`` (every image, (N, C, S, S) uint8,
read through a memory map) and ``images-<size>px.json`` (what it holds: the key, labels, subsets,
the CRC-32 of the array file and the unreadable images). The key is a hash of the file list with each
file's size and mtime, so any change to the folder decodes it again. Both files are written to a
temporary name and renamed, the array first: a half-written cache has no matching JSON, and a
damaged array fails its CRC; either is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ignite_app.config import Config
from ignite_app.data.arrays import PixelSplits, array_dataset, channel_stats, fits_in_memory
from ignite_app.data.images import (
    TRAIN, VAL, FolderScan, decode_image, first_image_size, is_gray, scan_folder, stratified_split,
)
from ignite_app.data.sources import SPLIT_SEED, DataSpec, Splits
from ignite_app.errors import UserError

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = ".ignite_app_cache"
CHUNK = 16 * 2**20

Warn = Callable[[str], None]


@dataclass(frozen=True)
class ImageCache:
    """A decoded image folder: the array file and, for each sample, its label and subset."""

    path: Path  # the .npy file
    labels: np.ndarray  # (N,) int64
    subsets: np.ndarray  # (N,) int8: images.TRAIN or images.VAL
    shape: tuple[int, ...]  # (N, C, S, S)
    skipped: int  # unreadable images left out

    def array(self) -> np.ndarray:
        """The images as a read-only memory map: nothing is read until it is indexed."""
        return np.load(self.path, mmap_mode="r")


def cache_folder(root: Path, cache_dir: str | None) -> Path:
    """``--cache-dir``, else ``.ignite_app_cache`` inside the dataset folder."""
    return Path(cache_dir) if cache_dir else root / DEFAULT_CACHE_DIR


def folder_key(scan: FolderScan, size: int) -> str:
    """A hash of the image size and of every file's path, size and mtime."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {size}\n".encode())
    for item in scan.files:
        stat = (scan.root / item.path).stat()
        digest.update(f"{item.path}\0{item.label}\0{item.subset}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_or_build(scan: FolderScan, size: int | None, cache_dir: str | None, strict: bool,
                  warn: Warn | None = None) -> ImageCache:
    """The cache for ``scan`` at ``size``: reused when it matches the folder and is intact, else (re)built."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    size = size or first_image_size(scan.root / scan.files[0].path)
    folder = cache_folder(scan.root, cache_dir)
    key = folder_key(scan, size)
    stem = folder / f"images-{size}px"
    cache = read_cache(stem, key, len(scan.classes))
    if cache is None:
        cache = build_cache(scan, size, stem, key, strict, warn)
    if cache.skipped:
        warn(f"warning: skipped {cache.skipped} unreadable image(s); one line each in {stem}.unreadable.txt")
    return cache


def read_cache(stem: Path, key: str, num_classes: int) -> ImageCache | None:
    """The cache at ``stem`` if its JSON matches ``key``, its array file is whole and its labels fit; else None."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            return None
        path = stem.with_suffix(".npy")
        if path.stat().st_size != meta["bytes"] or file_crc32(path) != meta["crc32"]:
            return None
        shape = tuple(int(d) for d in meta["shape"])
        if np.load(path, mmap_mode="r").shape != shape:
            return None
        labels, subsets = np.asarray(meta["labels"], np.int64), np.asarray(meta["subsets"], np.int64)
        # The JSON has no checksum: labels and subsets must still describe every row, with labels of this folder.
        if labels.shape != (shape[0],) or subsets.shape != (shape[0],) or not np.isin(subsets, (TRAIN, VAL)).all():
            return None
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            return None
        return ImageCache(path, labels, subsets.astype(np.int8), shape, int(meta["skipped"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None


def build_cache(scan: FolderScan, size: int, stem: Path, key: str, strict: bool, warn: Warn) -> ImageCache:
    """Decode every readable image into ``stem``.npy; write its JSON last."""
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the image cache folder {stem.parent} ({exc.strerror}); pass --cache-dir") from None
    good, bad = _readable(scan, strict)
    if not good:
        raise UserError(f"imagefolder: none of the {len(scan.files)} images in {scan.root} can be read")
    channels = 1 if all(gray for _, gray in good) else 3
    warn(f"decoding {len(good)} images of {scan.root} into {stem}.npy (once; later runs reuse it)")
    tmp = stem.parent / f".{stem.name}.{os.getpid()}.npy.tmp"
    shape = (len(good), channels, size, size)
    kept, failed = _decode_all(scan, [item for item, _ in good], size, channels, tmp, strict)
    bad += failed
    if failed:  # decoding failed after the header read: drop those rows
        tmp = _without_rows(tmp, kept, shape)
        shape = (int(kept.sum()), *shape[1:])
    items = [item for (item, _), ok in zip(good, kept) if ok]
    _write_report(stem, scan.root, bad)
    _fsync(tmp)
    os.replace(tmp, stem.with_suffix(".npy"))
    meta = {"version": CACHE_VERSION, "key": key, "shape": list(shape), "bytes": stem.with_suffix(".npy").stat().st_size,
            "crc32": file_crc32(stem.with_suffix(".npy")), "labels": [i.label for i in items],
            "subsets": [i.subset for i in items], "skipped": len(bad)}
    tmp_meta = stem.parent / f".{stem.name}.{os.getpid()}.json.tmp"
    tmp_meta.write_text(json.dumps(meta))
    _fsync(tmp_meta)
    os.replace(tmp_meta, stem.with_suffix(".json"))
    return ImageCache(stem.with_suffix(".npy"), np.asarray(meta["labels"], np.int64), np.asarray(meta["subsets"], np.int8),
                      shape, len(bad))


def _readable(scan: FolderScan, strict: bool) -> tuple[list, list[tuple[str, str]]]:
    """Images whose header Pillow reads, with whether each is grayscale; and the others with the reason."""
    good, bad = [], []
    for item in scan.files:
        try:
            good.append((item, is_gray(scan.root / item.path)))
        except Exception as exc:  # Pillow raises many types for a bad file
            _unreadable(item.path, exc, strict, bad)
    return good, bad


def _decode_all(scan: FolderScan, items: list, size: int, channels: int, tmp: Path,
                strict: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode ``items`` into a new array file ``tmp``; returns which rows hold an image, and the failures."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), channels, size, size))
    kept = np.ones(len(items), dtype=bool)
    failed: list[tuple[str, str]] = []
    for row, item in enumerate(items):
        try:
            out[row] = decode_image(scan.root / item.path, size, channels)
        except Exception as exc:
            kept[row] = False
            _unreadable(item.path, exc, strict, failed)
    out.flush()
    del out
    return kept, failed


def _unreadable(path: str, exc: Exception, strict: bool, bad: list[tuple[str, str]]) -> None:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if strict:
        raise UserError(f"imagefolder: cannot read {path} ({reason}); fix or remove it, or drop --strict to skip it")
    bad.append((path, reason))


def _without_rows(tmp: Path, kept: np.ndarray, shape: tuple[int, ...]) -> Path:
    """A copy of the array file ``tmp`` with only the ``kept`` rows."""
    src = np.load(tmp, mmap_mode="r")
    dst_path = tmp.with_name(tmp.name + ".kept")
    dst = np.lib.format.open_memmap(dst_path, mode="w+", dtype=np.uint8, shape=(int(kept.sum()), *shape[1:]))
    dst[:] = src[kept]
    dst.flush()
    del dst, src
    os.replace(dst_path, tmp)
    return tmp


def _write_report(stem: Path, root: Path, bad: list[tuple[str, str]]) -> None:
    report = stem.with_suffix(".unreadable.txt")
    if bad:
        report.write_text("".join(f"{root / path}: {reason}\n" for path, reason in bad))
    elif report.exists():
        report.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def file_crc32(path: Path) -> int:
    """CRC-32 of a whole file, read in chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


@dataclass(frozen=True)
class ImageSplits(PixelSplits):
    """:class:`PixelSplits` of an image folder, with its class names."""

    classes: tuple[str, ...] = ()


def load_image_splits(cfg: Config) -> Splits:
    """``--dataset imagefolder:PATH``: the decoded cache, split into train and validation datasets."""
    scan = scan_folder(Path(cfg.dataset[len("imagefolder:"):]))
    cache = load_or_build(scan, cfg.image_size, cfg.cache_dir, cfg.strict)
    if scan.has_val_folder:
        train_rows, val_rows = np.flatnonzero(cache.subsets == TRAIN), np.flatnonzero(cache.subsets == VAL)
    else:
        train_rows, val_rows = stratified_split(cache.labels, cfg.val_fraction, SPLIT_SEED)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise UserError(f"{cfg.dataset}: {len(train_rows)} training and {len(val_rows)} validation images; "
                        "both need at least one (add images, or change --val-fraction)")
    labels = torch.from_numpy(cache.labels)
    fits = fits_in_memory(cache.path, len(cache.labels), cfg.memory_budget_mb)
    train = array_dataset(cache.path, train_rows, labels[train_rows], fits)
    val = array_dataset(cache.path, val_rows, labels[val_rows], fits)
    mean, std = channel_stats(train)
    spec = DataSpec("classification", tuple(cache.shape[1:]), len(scan.classes))
    return ImageSplits(train, val, spec, pixel_mean=mean, pixel_std=std, classes=scan.classes)
