"""One writer per run directory: an advisory lock held for the whole run, and new directories claimed atomically.

The lock is ``fcntl.flock`` on ``.ignite-app.lock`` inside the run directory. The kernel drops it when
its process dies (SIGKILL included), so a lock left by a killed run is simply taken over; the file
records who holds it (pid, host, start time) so that a refused run can name the holder.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ignite_app.errors import UserError

LOCK_FILE = ".ignite-app.lock"
_HOLDER_WAIT_S = 1.0  # how long a refused run waits for the holder to have written its name


class RunLock:
    """An exclusive, non-blocking lock on one run directory; :meth:`release` (or process death) frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock's owner created: removed again if left empty

    def acquire(self, created: list[Path] | None = None) -> RunLock:
        """Take the lock or raise a one-line :class:`UserError` naming the holder; never waits for it."""
        import fcntl

        self._created = list(created or [])
        for _ in range(10):  # the file can be unlinked by a holder cleaning up between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise UserError(f"{self.run_dir} is in use by {describe_holder(self.path)}; wait for that run "
                                "to end or stop it, or choose another --output-dir") from None
            if not _is_regular(fd):
                os.close(fd)
                raise UserError(f"{self.path} is not a regular file; remove it, then try again")
            if _same_file(fd, self.path):
                self._fd = fd
                _write_holder(fd)
                return self
            os.close(fd)
        raise UserError(f"{self.run_dir}: could not take its lock file {LOCK_FILE}; try again")

    def release(self) -> None:
        """Free the lock and remove its file; folders this run created and left empty are removed too.

        The file goes while the lock is still held: a run that opened it meanwhile sees that its file is
        no longer the one at the path (:meth:`acquire` checks) and tries again with a fresh one.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
            for folder in reversed(self._created):
                _rmdir_if_empty(folder)
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_run_dir(run_dir: Path, create: bool = True) -> RunLock:
    """Create ``run_dir`` (and missing parents) if asked, then lock it; see :class:`RunLock`."""
    run_dir = Path(run_dir)
    created = make_dirs(run_dir) if create else []
    lock = RunLock(run_dir)
    try:
        return lock.acquire(created)
    except BaseException:
        for folder in reversed(created):
            _rmdir_if_empty(folder)
        raise


def make_dirs(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists() or candidate == candidate.parent:
            break
        missing.append(candidate)
    created = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another run: not ours to remove
        except NotADirectoryError:
            raise UserError(f"--output-dir {folder}: {candidate.parent} is a file, not a folder; choose another path") from None
        created.append(candidate)
    return created


def claim_new_dir(base: Path, limit: int = 10_000) -> tuple[Path, list[Path]]:
    """Create and return a directory that no other run has: ``base``, else ``base-2``, ``base-3``, ...

    ``mkdir`` without ``exist_ok`` is atomic: of several runs started in the same second, each gets its own.
    Also returns every folder created (parents included), outermost first.
    """
    base = Path(base)
    created = make_dirs(base.parent)
    for n in range(1, limit + 1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate, [*created, candidate]
    raise UserError(f"{base} and {limit} numbered variants all exist; pass --output-dir")


def claim_run_dir(output_dir: str | None, default_dir: str, fresh: bool) -> tuple[str, RunLock]:
    """The run directory, created if new and locked: ``output_dir``, else a new ``default_dir`` (numbered if taken).

    A fresh run refuses a directory that already holds files (its lock file aside); a resumed one needs its own.
    """
    try:
        return _claim_run_dir(output_dir, default_dir, fresh)
    except OSError as exc:  # a read-only file system, no permission, ...
        where = output_dir or default_dir
        raise UserError(f"cannot write the run directory {where} ({exc.strerror or exc}); "
                        "choose a writable --output-dir") from None


def _claim_run_dir(output_dir: str | None, default_dir: str, fresh: bool) -> tuple[str, RunLock]:
    if output_dir is None:
        folder, created = claim_new_dir(Path(default_dir))
        return str(folder), RunLock(folder).acquire(created)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file; choose a directory")
    if fresh and out.is_dir() and not (out / LOCK_FILE).exists() and any(out.iterdir()):
        _refuse_used(out)  # not a run of ours: leave no lock file in it
    lock = lock_run_dir(out, create=fresh)
    if fresh and not _only_lock_file(out):
        lock.release()
        _refuse_used(out)
    return output_dir, lock


def _refuse_used(out: Path) -> None:
    raise UserError(f"{out} already holds files; continue that run with --resume {out}, or choose another --output-dir")


def describe_holder(path: Path) -> str:
    """``pid N on host H since T`` from a lock file, or a plain phrase when it does not say yet."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        holder = read_holder(path)
        if holder or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # the holder took the lock a moment ago and is writing its name
    if not holder:
        return "another process"
    pid, host, started = (str(holder.get(key))[:64] for key in ("pid", "host", "started"))  # the file may be anyone's
    return f"pid {pid} on host {host} since {started}"


def read_holder(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder (empty if nothing readable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        holder = json.loads(data.decode("utf-8"))
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _only_lock_file(folder: Path) -> bool:
    try:
        return [p.name for p in folder.iterdir()] == [LOCK_FILE]
    except OSError:
        return False


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or gone: either way not ours to remove
