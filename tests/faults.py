"""Fault injection for the tests: file wrappers handed to ``AtomicSaver(wrap_file=...)``.

They live here, not in the package: production code only offers the seam.
"""

from __future__ import annotations

import errno
import os
import time
from typing import IO, Callable

FileWrap = Callable[[IO[bytes], int], IO[bytes]]


def slow_writes(seconds: float) -> FileWrap:
    """Every save pauses ``seconds`` after its first write, so a kill can land mid-save."""
    return lambda f, save_number: _SlowWriter(f, seconds)


def full_disk_from(first_failing_save: int) -> FileWrap:
    """From the N-th save on, a write fails half-way with ENOSPC once, as on a full disk."""
    return lambda f, save_number: _FullDiskWriter(f) if save_number >= first_failing_save else f


class _SlowWriter:
    def __init__(self, raw: IO[bytes], seconds: float) -> None:
        self.raw, self.seconds, self.paused = raw, seconds, False

    def write(self, data: bytes) -> int:
        n = self.raw.write(data)
        if not self.paused:
            self.paused = True
            self.raw.flush()  # the partial temporary file is on disk while we wait
            time.sleep(self.seconds)
        return n

    def flush(self) -> None:
        self.raw.flush()


class _FullDiskWriter:
    """Like a real full disk: a write fails half-way; later ones may succeed (space is freed meanwhile)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.failed = raw, False

    def write(self, data: bytes) -> int:
        if self.failed:
            return self.raw.write(data)
        self.failed = True
        self.raw.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        self.raw.flush()


def failing_event_writes(first_failing: int, error: int = errno.ENOSPC) -> None:
    """From the N-th record on, tensorboardX's event-file writes fail with ``error``, as on a full disk."""
    from tensorboardX import record_writer

    original = record_writer.RecordWriter.write
    calls = [0]

    def write(self, data: bytes) -> None:
        calls[0] += 1
        if calls[0] >= first_failing and "hparams" not in str(self.path):
            raise OSError(error, os.strerror(error))
        original(self, data)

    record_writer.RecordWriter.write = write
