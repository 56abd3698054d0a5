"""TensorBoard event files that are on disk when a checkpoint is, that never hang a run, and stay off the hot path.

tensorboardX hands each event to a worker thread through a bounded queue. Its ``flush()`` writes
what that thread has written so far, not what still waits in the queue, so a kill right after a
checkpoint could lose the events the checkpoint covers; and when the thread dies (a full disk),
the next ``add_scalar`` blocks forever on the full queue, deaf to signals. :func:`write_synchronously`
replaces the queue and the thread with :class:`SyncEventWriter`: each event is written on the
calling thread, and a failed write is one error (exit code 4) instead of a hang.
:class:`ScalarBuffer` then keeps the training loop's scalars in memory until the next flush point.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ignite_app.errors import EventWriteError
from ignite_app.io.atomic import fsync_dir, is_disk_full


class SyncEventWriter:
    """Stands in for an ``EventFileWriter``'s queue, worker thread and events writer; writes on the caller's thread.

    ``flush`` writes, flushes and fsyncs the event file (tensorboardX's RecordWriter fsyncs on flush), then
    fsyncs its folder. After a failed write it writes nothing more: the file keeps every whole event before it.
    """

    def __init__(self, events_writer: Any, folder: Path, flush_secs: float) -> None:
        self._inner = events_writer  # tensorboardX's EventsWriter: the file itself
        self._folder = Path(folder)
        self._flush_secs = flush_secs
        self._next_flush = time.monotonic() + flush_secs
        self._failed = False
        self._closed = False

    def put(self, event: Any, *args: Any, **kwargs: Any) -> None:
        """What ``add_event`` calls: write the event now; let a viewer see it every ``flush_secs``."""
        self.write_event(event)
        if time.monotonic() >= self._next_flush:
            self._guarded(lambda: self._inner._py_recordio_writer._writer.flush())  # visible, not yet fsynced
            self._next_flush = time.monotonic() + self._flush_secs

    def write_event(self, event: Any) -> None:
        """Append one event to the file (buffered)."""
        self._guarded(lambda: self._inner.write_event(event))

    def flush(self) -> bool:
        """Every event written so far is on disk when this returns."""
        self._guarded(self._inner.flush)
        if not self._failed:
            self._guarded(lambda: fsync_dir(self._folder))
        return True

    def stop(self) -> None:
        """The worker thread's ``stop``: there is no thread."""

    def close(self) -> None:
        """Close the file once (called as the queue's and as the writer's ``close``)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._inner.close()
        except OSError:
            if not self._failed:
                raise EventWriteError(f"cannot close the TensorBoard event file in {self._folder}") from None

    def _guarded(self, action: Any) -> None:
        if self._failed or self._closed:
            return
        try:
            action()
        except OSError as exc:
            self._failed = True
            raise event_write_error(exc, self._folder) from None


class ScalarBuffer:
    """A ``SummaryWriter`` whose ``add_scalar`` calls wait in a list until the next flush point.

    Measured reason (issue 16, ``docs/speed.md``): Ignite's handlers call ``add_scalar`` every
    ``--log-every`` iterations, and each call runs tensorboardX's protobuf building, its pure-Python
    CRC32C and a file write between two training steps, where that code and its data are cold:
    ~130 us a call against ~20 us in a loop, and with them the steps that follow run slower. Deferred
    to the flush points, the same events cost a small model's CPU epoch at most ~1% instead of 3-4%:
    ``scripts/bench.py --logging-cost``, 100 interleaved rounds, twice: 1.093x the eager floor written
    at each call, 1.059x and 1.074x buffered, 1.058x and 1.066x with no training scalars at all.

    Nothing is lost that was kept before: the pending scalars are written (with the wall time of
    their call) by ``flush()``, which runs before every checkpoint, by ``close()``, before any other
    kind of event (the file keeps the calls' order), with a flush once ``flush_secs`` have passed
    since the last write (a viewer sees them as soon as before), and when ``max_pending`` wait
    (bounded memory).
    """

    def __init__(self, writer: Any, flush_secs: float, max_pending: int = 1000) -> None:
        self._writer = writer
        self._flush_secs = flush_secs
        self._max_pending = max_pending
        self._pending: list[tuple[str, Any, Any, float, dict[str, Any]]] = []
        self._due = time.monotonic() + flush_secs

    @property
    def unbuffered(self) -> Any:
        """The ``SummaryWriter`` underneath (``scripts/bench.py --logging-cost`` times a run that writes to it)."""
        return self._writer

    def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None, walltime: float | None = None,
                   **kwargs: Any) -> None:
        """Keep the call; write the pending ones when they are due."""
        self._pending.append((tag, scalar_value, global_step, time.time() if walltime is None else walltime, kwargs))
        if time.monotonic() >= self._due:
            self.flush()  # on disk, so a viewer sees them: the file's own timer may have just been reset
        elif len(self._pending) >= self._max_pending:
            self.write_pending()

    def write_pending(self) -> None:
        """Hand the pending scalars to the writer, in the order of their calls."""
        pending, self._pending = self._pending, []
        self._due = time.monotonic() + self._flush_secs
        for tag, value, step, walltime, kwargs in pending:
            self._writer.add_scalar(tag, value, step, walltime, **kwargs)

    def flush(self) -> None:
        """Every scalar so far on disk (the writer's own flush: fsynced)."""
        self.write_pending()
        self._writer.flush()

    def close(self) -> None:
        """Write what is pending, then close the writer (even if that write failed)."""
        try:
            self.write_pending()
        finally:
            self._writer.close()

    def __getattr__(self, name: str) -> Any:
        if name == "_writer":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        attr = getattr(self._writer, name)
        if not (name.startswith("add_") and callable(attr)):
            return attr

        def in_order(*args: Any, **kwargs: Any) -> Any:
            self.write_pending()
            return attr(*args, **kwargs)

        return in_order


def event_write_error(exc: OSError, folder: Path) -> EventWriteError:
    """The one-line error for a failed TensorBoard write."""
    if is_disk_full(exc):
        return EventWriteError(f"no space left on device while writing TensorBoard events in {folder}; free some space, "
                               "then continue with --resume")
    return EventWriteError(f"cannot write TensorBoard events in {folder} ({exc.strerror or exc}); "
                           "fix the disk, then continue with --resume")


def write_synchronously(summary_writer: Any) -> None:
    """Make a tensorboardX ``SummaryWriter`` write its events on the calling thread (see the module doc).

    Its worker thread is stopped first, which writes what it had queued (the purge events of a resume).
    """
    event_file_writer = summary_writer._get_file_writer().event_writer
    event_file_writer._worker.stop()
    sync = SyncEventWriter(event_file_writer._ev_writer, Path(event_file_writer.get_logdir()),
                           event_file_writer._flush_secs)
    event_file_writer._event_queue = sync
    event_file_writer._worker = sync
    event_file_writer._ev_writer = sync
    sync.flush()  # the new file's name is durable in its folder from the start



def write_hparams(folder: Path, hparam_dict: dict[str, Any], metric_dict: dict[str, float], step: int) -> None:
    """What tensorboardX's ``add_hparams`` writes (a sub-run in ``folder``), on this thread and fsynced.

    Its own version queues a dozen events behind a writer thread that a full disk kills: the run would hang at its end.
    """
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    experiment, start, end = hparams(hparam_dict, metric_dict)
    writer = SummaryWriter(logdir=str(folder))
    write_synchronously(writer)
    try:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metric_dict.items():
            writer.add_scalar(tag, value, step)
        writer.flush()
    finally:
        writer.close()
