"""TensorBoard events written on the training thread: on disk at every flush, and a failed write is one error."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from tensorboardX import SummaryWriter, record_writer

from conftest import read_scalars
from ignite_app.errors import EventWriteError
from ignite_app.io.events import write_synchronously


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
