"""Crash-safe file writes: temporary file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from ignite_app.errors import DiskFullError, UserError

TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """Write ``path`` through ``write(file)`` so that it appears whole or not at all.

    Returns the SHA-256 of the bytes written. On any failure the partial temporary file is
    removed and ``path`` keeps its previous content; a full disk raises :class:`DiskFullError`.
    """
    path = Path(path)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; these files are meant to be read by others
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            write(hashing)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp_name is not None:
            _remove_quietly(tmp_name)
        if is_disk_full(exc):
            raise DiskFullError(f"no space left on device while writing {path}; free some space") from None
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"cannot write {path} ({exc.strerror}); choose a writable location") from None
        raise
    return hashing.hexdigest()


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ENOSPC (or a quota error) caused ``exc``, even behind another error.

    ``torch.save`` hides it: its zip writer fails again while closing and raises a RuntimeError.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Atomically replace ``path`` with ``data``; returns its SHA-256."""
    return atomic_write(path, lambda f: f.write(data))


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that an interrupted write left in ``folder``."""
    stale = sorted(p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file())
    for p in stale:
        _remove_quietly(p)
    return stale


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
