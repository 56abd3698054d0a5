"""Checkpoint snapshots (issue 16): one pass on the training thread, written in the background, at most one copy of the state alive."""

from __future__ import annotations

import threading

import torch

from ignite_app.io import checkpoint as ckpt
from ignite_app.io.snapshot import Snapshots


def model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_snapshot_is_an_equal_copy_that_later_steps_do_not_change():
    model, optimizer = model_and_optimizer()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 3, "names": ["a", ("b", 1.5)]}
    snap = Snapshots().take(state)
    assert snap["model"]._metadata == state["model"]._metadata  # the module versions load_state_dict reads
    assert snap["step"] == 3 and snap["names"] == ["a", ("b", 1.5)]
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    assert all(torch.equal(snap["model"][k], expected[k]) for k in expected)
    assert not torch.equal(snap["model"]["0.weight"], model.state_dict()["0.weight"])


def test_the_best_model_and_the_training_checkpoint_of_one_epoch_share_their_weights():
    model, optimizer = model_and_optimizer()
    snapshots = Snapshots()
    best = snapshots.take({"model": model.state_dict()})
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert snapshots.cached_bytes() == weights
    train = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    needed = snapshots.bytes_needed(train)
    full = snapshots.take(train)
    assert all(full["model"][k] is best["model"][k] for k in best["model"])  # no second copy of the weights
    assert snapshots.cached_bytes() == weights + needed
    with torch.no_grad():
        model[0].weight.add_(1)  # a step: that weight is copied anew, the others are still shared
    again = snapshots.take({"model": model.state_dict()})
    assert again["model"]["0.weight"] is not best["model"]["0.weight"]
    assert again["model"]["2.weight"] is best["model"]["2.weight"]
    assert torch.equal(again["model"]["0.weight"], model[0].weight)


def test_the_background_saver_waits_only_when_a_save_would_need_a_second_copy_of_the_state(tmp_path):
    model, optimizer = model_and_optimizer()
    gate = threading.Event()
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path, wrap_file=lambda f, n: _Gated(f, gate)))
    saver({"model": model.state_dict()}, "best.pt")
    saver({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "train.pt")  # shares the weights
    assert not (tmp_path / "best.pt").exists()  # both calls returned while the writer is held at the gate
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1)
    threading.Timer(0.2, gate.set).start()
    saver({"model": model.state_dict()}, "best2.pt")  # new weights: a second copy, so the writes in flight finish first
    assert (tmp_path / "best.pt.sha256").exists() and (tmp_path / "train.pt.sha256").exists()
    saver.close()
    saved = ckpt.read_checkpoint(tmp_path / "train.pt", require_checksum=True)
    assert torch.equal(saved["model"]["0.weight"], before)
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "best2.pt")["model"]["0.weight"], model[0].weight)
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_tensors_only_the_best_model_holds_do_not_make_the_training_checkpoint_wait(tmp_path):
    # The best model also carries its preprocessing; the training checkpoint then needs only the optimizer
    # state beside the shared weights. A rule on total bytes made this second save wait for the first write.
    model, optimizer = model_and_optimizer()
    gate = threading.Event()
    release = threading.Timer(10.0, gate.set)  # only so that a saver that waits cannot hang the suite
    release.start()
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path, wrap_file=lambda f, n: _Gated(f, gate)))
    try:
        saver({"model": model.state_dict(), "preprocess": {"mean": torch.randn(64)}}, "best.pt")
        saver({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "trainer": {"rng": torch.randn(8)}}, "train.pt")
        assert not (tmp_path / "best.pt").exists()  # returned while the writer is still held at the gate
    finally:
        gate.set()
        release.cancel()
        saver.close()
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "train.pt")["optimizer"]["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])


class _Gated:
    """A file whose writes wait until ``gate`` is set."""

    def __init__(self, raw, gate: threading.Event) -> None:
        self.raw, self.gate = raw, gate

    def write(self, data: bytes) -> int:
        self.gate.wait()
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def test_after_a_clear_the_next_snapshot_copies_into_the_same_buffers():
    model, _ = model_and_optimizer()
    snapshots = Snapshots()
    first = snapshots.take({"model": model.state_dict()})["model"]["0.weight"]
    snapshots.clear()
    with torch.no_grad():
        model[0].weight.mul_(2)
    second = snapshots.take({"model": model.state_dict()})["model"]["0.weight"]
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, model[0].weight)
    snapshots.clear(keep_buffers=False)
    snapshots.take({"model": model.state_dict()})
    assert snapshots.cached_bytes() == sum(t.numel() * t.element_size() for t in model.state_dict().values())
