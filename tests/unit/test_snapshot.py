"""Checkpoint snapshots (issue 16): one pass on the training thread, written in the background, at most one copy of the state alive."""

from __future__ import annotations

import threading

import pytest
import torch

from ignite_app.io import checkpoint as ckpt
from ignite_app.io.snapshot import Snapshots


def model_and_optimizer(batch_norm: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small model after one fused Adam step; without ``batch_norm`` no in-place op bumps a version counter."""
    torch.manual_seed(0)
    middle = torch.nn.BatchNorm1d(8) if batch_norm else torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), middle, torch.nn.Linear(8, 2))
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
    best = snapshots.take({"model": model.state_dict()}, generation=1)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert snapshots.cached_bytes() == weights
    train = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    needed = snapshots.bytes_needed(train, generation=1)
    full = snapshots.take(train, generation=1)
    assert all(full["model"][k] is best["model"][k] for k in best["model"])  # no second copy of the weights
    assert snapshots.cached_bytes() == weights + needed
    with torch.no_grad():
        model[0].weight.add_(1)  # changed in place at the same step: that weight is copied anew, the others shared
    again = snapshots.take({"model": model.state_dict()}, generation=1)
    assert again["model"]["0.weight"] is not best["model"]["0.weight"]
    assert again["model"]["2.weight"] is best["model"]["2.weight"]
    assert torch.equal(again["model"]["0.weight"], model[0].weight)
    unshared = snapshots.take({"model": model.state_dict()})  # no generation: nothing is shared
    assert all(unshared["model"][k] is not again["model"][k] for k in again["model"])


def test_a_fused_adam_step_leaves_the_version_counter_so_a_new_step_never_reuses_a_copy():
    model, optimizer = model_and_optimizer(batch_norm=False)
    versions = [p._version for p in model.parameters()]
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()  # fused: the weights change in place...
    assert [p._version for p in model.parameters()] == versions  # ...without a bump (torch 2.13): why copies carry a step
    snapshots = Snapshots()
    first = snapshots.take({"model": model.state_dict()}, generation=10)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    assert snapshots.has_stale_copy({"model": model.state_dict()}, generation=11)
    second = snapshots.take({"model": model.state_dict()}, generation=11)
    assert all(torch.equal(second["model"][k], v) for k, v in model.state_dict().items())
    assert not torch.equal(first["model"]["0.weight"], second["model"]["0.weight"])  # the first copy is left intact


def test_the_background_saver_waits_only_when_a_save_would_need_a_second_copy_of_the_state(tmp_path):
    model, optimizer = model_and_optimizer()
    gate = threading.Event()
    step = [1]
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path, wrap_file=lambda f, n: _Gated(f, gate)), clock=lambda: step[0])
    saver({"model": model.state_dict()}, "best.pt")
    saver({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "train.pt")  # shares the weights
    assert not (tmp_path / "best.pt").exists()  # both calls returned while the writer is held at the gate
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1)
    step[0] = 2
    threading.Timer(0.2, gate.set).start()
    saver({"model": model.state_dict()}, "best2.pt")  # new weights: a second copy, so the writes in flight finish first
    assert (tmp_path / "best.pt.sha256").exists() and (tmp_path / "train.pt.sha256").exists()
    saver.close()
    saved = ckpt.read_checkpoint(tmp_path / "train.pt", require_checksum=True)
    assert torch.equal(saved["model"]["0.weight"], before)
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "best2.pt")["model"]["0.weight"], model[0].weight)
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_the_next_steps_best_model_gets_the_next_steps_weights_while_a_write_is_in_flight(tmp_path):
    # Session 5's bug: with the previous epoch's writes still in flight, the best model of the next epoch reused
    # the previous snapshot of the weights, because fused Adam does not bump the version counter it was keyed on.
    model, optimizer = model_and_optimizer(batch_norm=False)  # batch norm's running stats would bump it
    step = [1]
    gate = threading.Event()
    release = threading.Timer(10.0, gate.set)  # only so that a saver that waits cannot hang the suite
    release.start()
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path, wrap_file=lambda f, n: _Gated(f, gate)), clock=lambda: step[0])
    try:
        saver({"model": model.state_dict()}, "best_1.pt")
        saver({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "train_1.pt")
        assert not (tmp_path / "best_1.pt").exists()  # the same step: shared, nobody waits
        first = {k: v.clone() for k, v in model.state_dict().items()}
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        step[0] = 2
        threading.Timer(0.2, gate.set).start()
        saver({"model": model.state_dict()}, "best_2.pt")  # waits for step 1's writes, then copies anew
    finally:
        gate.set()
        release.cancel()
        saver.close()
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "best_1.pt")["model"]["0.weight"], first["0.weight"])
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "best_2.pt")["model"]["0.weight"], model[0].weight)
    assert not torch.equal(first["0.weight"], model[0].weight)


def test_tensors_only_the_best_model_holds_do_not_make_the_training_checkpoint_wait(tmp_path):
    # The best model also carries its preprocessing; the training checkpoint then needs only the optimizer
    # state beside the shared weights. A rule on total bytes made this second save wait for the first write.
    model, optimizer = model_and_optimizer()
    gate = threading.Event()
    release = threading.Timer(10.0, gate.set)  # only so that a saver that waits cannot hang the suite
    release.start()
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path, wrap_file=lambda f, n: _Gated(f, gate)), clock=lambda: 1)
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


def test_with_writes_slower_than_epochs_every_best_model_holds_the_weights_its_step_validated(tmp_path, monkeypatch):
    """A real run whose checkpoint writes take longer than an epoch: each best model must score, when evaluated,
    the validation loss its step had (with the version-keyed cache it held an earlier epoch's weights)."""
    from ignite.engine import Events

    from faults import slow_writes
    from ignite_app.config import Config
    from ignite_app.train.build import build_run
    from ignite_app.train.loop import close_run

    original = ckpt.AtomicSaver.__init__
    monkeypatch.setattr(ckpt.AtomicSaver, "__init__",
                        lambda self, dirname, write=True, wrap_file=None: original(self, dirname, write, slow_writes(0.3)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = Config(dataset="digits", model="mlp", batch_size=256, epochs=4, patience=0, progress=False, device="cpu",
                 output_dir=str(tmp_path / "run"))
    run = build_run(cfg, torch.device("cpu"), echo=lambda line: None)
    validated: dict[int, float] = {}
    run.evaluator.add_event_handler(
        Events.COMPLETED, lambda ev: validated.__setitem__(run.trainer.state.iteration, ev.state.metrics["loss"]))
    try:
        run.trainer.run(run.train_loader, max_epochs=cfg.epochs, epoch_length=run.epoch_length)
    finally:
        close_run(run)
        torch.set_num_threads(before)
    bests = sorted((run.run_dir / "checkpoints").glob("best_model_*.pt"))
    expected = dict(validated)  # the evaluator below records again
    assert bests and len(expected) == cfg.epochs and len(set(expected.values())) == cfg.epochs
    for best in bests:
        step = int(best.stem.split("_")[-1])
        run.raw_model.load_state_dict(ckpt.read_checkpoint(best)["model"])
        run.evaluator.run(run.val_loader)  # the same validation pass, on the file's weights
        assert run.evaluator.state.metrics["loss"] == pytest.approx(expected[step], rel=1e-6), best.name
