"""Errors that end a run, each with the exit code the command returns for it."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_DISK_FULL = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type's name), at most ``limit`` characters: for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0].rstrip(":") if text else type(exc).__name__)[:limit]


class AppError(Exception):
    """A failure the user can act on: printed as one line, never as a traceback."""

    exit_code = 1


class UserError(AppError):
    """Bad input: an option, a file, a dataset or a checkpoint that does not fit (exit code 2)."""

    exit_code = EXIT_USAGE


class NonFiniteLossError(AppError):
    """The training loss became NaN or infinite; the last good checkpoint is kept (exit code 3)."""

    exit_code = EXIT_NONFINITE


class DiskFullError(AppError):
    """A checkpoint could not be written for lack of space; the previous one is kept (exit code 4)."""

    exit_code = EXIT_DISK_FULL


class EventWriteError(AppError):
    """A TensorBoard event file could not be written (a full disk, an I/O error); the checkpoints are kept (exit code 4)."""

    exit_code = EXIT_DISK_FULL
