"""TensorBoard events written on the training thread: on disk at every flush, and a failed write is one error;
the training loop's scalars wait in memory until a flush point."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from tensorboardX import SummaryWriter, record_writer

from conftest import read_scalars
from ignite_app.errors import EventWriteError
from ignite_app.io.events import ScalarBuffer, write_synchronously


def test_every_event_is_readable_after_flush_without_closing(tmp_path):
    writer = SummaryWriter(str(tmp_path), purge_step=5, max_queue=1000, flush_secs=3600)
    write_synchronously(writer)
    threads = {t.name for t in threading.enumerate()}
    for step in range(5, 505):
        writer.add_scalar("val/loss", float(step), step)
    writer.flush()
    assert [s for s, _ in read_scalars(tmp_path)["val/loss"]] == list(range(5, 505))
    assert {t.name for t in threading.enumerate()} <= threads  # no writer thread left behind
    writer.close()


def test_a_failed_write_is_one_error_with_exit_code_4_and_never_blocks(tmp_path, monkeypatch):
    writer = SummaryWriter(str(tmp_path), max_queue=2)
    write_synchronously(writer)
    writer.add_scalar("val/loss", 1.0, 1)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    with pytest.raises(EventWriteError, match=f"no space left on device while writing TensorBoard events in {tmp_path}") as info:
        writer.add_scalar("val/loss", 2.0, 2)
    assert info.value.exit_code == 4
    for step in range(3, 30):  # with tensorboardX's queue of 2, these blocked forever behind a dead thread
        writer.add_scalar("val/loss", float(step), step)
    writer.flush()
    writer.close()
    assert read_scalars(tmp_path)["val/loss"] == [(1, 1.0)]


def test_an_io_error_names_its_reason(tmp_path, monkeypatch):
    writer = SummaryWriter(str(tmp_path))
    write_synchronously(writer)
    monkeypatch.setattr(record_writer.RecordWriter, "flush", lambda self: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    writer.add_scalar("val/loss", 1.0, 1)
    with pytest.raises(EventWriteError, match=r"cannot write TensorBoard events in .* \(I/O error\); fix the disk"):
        writer.flush()
    writer.close()


def test_the_hparams_sub_run_on_a_failing_disk_is_one_error_not_a_hang(tmp_path, monkeypatch):
    from ignite_app.config import Config
    from ignite_app.train.tblog import log_hparams, open_tensorboard

    tb = open_tensorboard(tmp_path)
    metrics = {f"m{i}": float(i) for i in range(20)}  # more events than tensorboardX's queue of 10 holds
    log_hparams(tb, Config(), metrics, 5)
    hp = read_scalars(tmp_path / "hparams")
    assert hp["hparam/m19"] == [(5, 19.0)]

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "flush", full)
    with pytest.raises(EventWriteError, match="no space left on device"):
        log_hparams(tb, Config(), metrics, 6)
    monkeypatch.undo()
    tb.close()


def _buffered(folder, flush_secs=3600.0, max_pending=1000):
    writer = SummaryWriter(str(folder), flush_secs=3600)
    write_synchronously(writer)
    return ScalarBuffer(writer, flush_secs, max_pending)


def _events(folder):
    """(kind, tag, step, wall time) of every summary event in the folder's event files, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                kind = "text" if value.metadata.plugin_data.plugin_name == "text" else "scalar"
                out.append((kind, value.tag, event.step, event.wall_time))
    return out


def test_scalars_wait_in_memory_until_flush_then_all_land_with_the_wall_time_of_their_call(tmp_path):
    buffer = _buffered(tmp_path)
    calls = []
    for step in range(10, 60, 10):
        before = time.time()
        buffer.add_scalar("train/loss", step / 10, step)
        calls.append((before, time.time()))
        time.sleep(0.01)
    buffer._writer.flush()  # the writer underneath has nothing of them yet
    assert read_scalars(tmp_path) == {}
    buffer.flush()
    assert read_scalars(tmp_path)["train/loss"] == [(s, s / 10) for s in range(10, 60, 10)]
    walls = [wall for _, _, _, wall in _events(tmp_path)]
    assert all(lo - 1e-3 <= wall <= hi + 1e-3 for wall, (lo, hi) in zip(walls, calls))
    buffer.close()


def test_another_kind_of_event_writes_the_pending_scalars_first(tmp_path):
    buffer = _buffered(tmp_path)
    buffer.add_scalar("train/loss", 1.0, 10)
    buffer.add_text("note", "after the loss", 10)
    buffer.add_scalar("train/loss", 2.0, 20)
    buffer.close()  # writes the last one
    assert [(kind, tag, step) for kind, tag, step, _ in _events(tmp_path)] == [
        ("scalar", "train/loss", 10), ("text", "note/text_summary", 10), ("scalar", "train/loss", 20)]


def test_pending_scalars_are_written_when_due_or_too_many(tmp_path, monkeypatch):
    written = []
    buffer = _buffered(tmp_path, flush_secs=3600.0, max_pending=3)
    monkeypatch.setattr(buffer._writer, "add_scalar", lambda tag, value, step, walltime: written.append(step))
    for step in range(1, 8):
        buffer.add_scalar("x", 0.0, step)
    assert written == [1, 2, 3, 4, 5, 6]  # two batches of three; the seventh waits
    due = _buffered(tmp_path / "due", flush_secs=0.0)
    due.add_scalar("x", 0.5, 1)  # flush_secs passed: written and flushed at once, readable while the writer is open
    assert read_scalars(tmp_path / "due")["x"] == [(1, 0.5)]
    due.close()


def test_a_failed_write_of_pending_scalars_is_the_one_error_at_the_flush(tmp_path, monkeypatch):
    buffer = _buffered(tmp_path)
    buffer.add_scalar("val/loss", 1.0, 1)
    buffer.flush()
    monkeypatch.setattr(record_writer.RecordWriter, "write", lambda self, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    buffer.add_scalar("val/loss", 2.0, 2)  # waits in memory: no error yet
    with pytest.raises(EventWriteError, match="no space left on device") as info:
        buffer.flush()
    assert info.value.exit_code == 4
    monkeypatch.undo()
    buffer.close()
    assert read_scalars(tmp_path)["val/loss"] == [(1, 1.0)]
