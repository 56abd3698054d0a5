"""Image folders: find the files and classes, split them, decode one image with Pillow.

The layout is torchvision's ``ImageFolder``: one subfolder per class, or ``train/`` and ``val/``
folders that each hold the class subfolders. Every image is decoded to a square uint8 array
(resize the shorter side to ``size``, center-crop): the same for training, validation and ``predict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ignite_app.errors import UserError

# What Pillow reads without plugins; a file with another suffix is not an image and is ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
DEFAULT_SIZE_RANGE = (4, 1024)  # a first image outside it does not choose the size: 9000 px made an 11 GB run
TRAIN, VAL = 0, 1


@dataclass(frozen=True)
class ImageFile:
    """One image: its path relative to the dataset root, its class and its subset (TRAIN or VAL folder)."""

    path: str
    label: int
    subset: int


@dataclass(frozen=True)
class FolderScan:
    """The images of a dataset folder, in a fixed order, and its class names."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[ImageFile, ...]
    has_val_folder: bool


def scan_folder(root: Path) -> FolderScan:
    """The classes and image files under ``root`` (``train/`` and ``val/`` when both exist)."""
    if not root.is_dir():
        raise UserError(f"imagefolder: {str(root)!r} is not a folder; give a folder of class subfolders")
    nested = (root / "train").is_dir() and (root / "val").is_dir()
    parts = [(root / "train", TRAIN), (root / "val", VAL)] if nested else [(root, TRAIN)]
    classes = _class_names(parts[0][0])
    if nested:
        extra = sorted(set(_class_names(root / "val")) - set(classes))
        if extra:
            raise UserError(f"imagefolder: {root / 'val'} has class {extra[0]!r}, which train/ lacks; "
                            "give both folders the same class subfolders")
    files = [ImageFile(str(path.relative_to(root)), label, subset)
             for folder, subset in parts for label, name in enumerate(classes) for path in _images_in(folder / name)]
    if not files:
        raise UserError(f"imagefolder: no images under {str(root)!r}; expected files such as {root}/CLASS/img.png")
    return FolderScan(root, tuple(classes), tuple(files), nested)


def _class_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise UserError(f"imagefolder: {str(folder)!r} has {len(names)} class subfolder(s); "
                        "classification needs one subfolder per class, at least 2")
    return names


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` and its subfolders, sorted; hidden ones skipped, and so is anything but a regular
    file (a FIFO named like an image blocks the first read forever; a broken link has nothing to read)."""
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(p for p in found if p.is_file())


def image_files(path: Path) -> list[Path]:
    """``path`` itself if it is an image file, else every image file under it (``predict``)."""
    if path.is_file():
        return [path]
    return _images_in(path)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: each class split in ``val_fraction`` with a seeded shuffle; sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        n_val = min(max(n_val, 1 if len(members) > 1 else 0), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def first_image_size(path: Path) -> int:
    """The shorter side of the image at ``path`` (the default ``--image-size``), read from its header.

    An unreadable image, or one whose side is outside :data:`DEFAULT_SIZE_RANGE` (one odd file in a
    folder, or a small file that declares a huge image), is refused: ``--image-size`` decides then.
    """
    from PIL import Image

    low, high = DEFAULT_SIZE_RANGE
    try:
        with Image.open(path) as img:
            side = min(img.size)
    except Exception as exc:  # PIL's UnidentifiedImageError, DecompressionBombError, OSError for truncated files
        raise UserError(f"imagefolder: cannot read {path}, whose size would set the default --image-size "
                        f"({type(exc).__name__}); pass --image-size N, or remove the file") from None
    if not low <= side <= high:
        raise UserError(f"imagefolder: {path} is {img.size[0]}x{img.size[1]} pixels, so its shorter side ({side}) "
                        f"cannot be the default --image-size ({low}-{high}); pass --image-size N")
    return side


def is_gray(path: Path) -> bool:
    """Whether the image is grayscale, reading only its header."""
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in GRAY_MODES


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """The image as a (channels, size, size) uint8 array: shorter side resized to ``size``, center-cropped.

    16-bit grayscale (``I;16``, e.g. a 16-bit PNG) keeps its high byte: Pillow's own conversion to 8 bits
    clips every value above 255, which turned such an image into two values.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at a reduced scale when it can
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
        img = img.convert("RGB" if channels == 3 else "L")
        width, height = img.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def read_images(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """Every image at ``path`` (a file, or a folder searched in sorted order) decoded for a model taking ``input_shape``."""
    files = image_files(path)
    if not files:
        raise UserError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    channels, size = input_shape[0], input_shape[-1]
    out = np.empty((len(files), *input_shape), dtype=np.uint8)
    for row, file in enumerate(files):
        try:
            out[row] = decode_image(file, size, channels)
        except Exception as exc:
            raise UserError(f"--input: cannot read image {file} ({type(exc).__name__}); fix or remove it") from None
    return out
