"""Each fast path gives the plain path's results: in-memory data, AMP, channels_last, gradient
accumulation, clipping after unscaling, background checkpoint writes, deferred imports; and the
benchmark runs end to end. No timings are asserted here: speed lives in scripts/bench.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, cli_env, train_in_process, trained_weights
from ignite.engine import Events
from torch import nn

from faults import full_disk_from
from ignite_app.io import checkpoint as ckpt
from ignite_app.models.build import unwrap_model
from ignite_app.config import Config
from ignite_app.train.engines import (
    add_gradient_clipping,
    build_evaluator,
    build_trainer,
    make_scaler,
)
from ignite_app.errors import DiskFullError
from ignite_app.train.handlers import LossTracker
from ignite_app.train.build import make_optimizer

CPU = torch.device("cpu")


def test_in_memory_and_dataloader_paths_train_identical_weights(tmp_path, torch_threads):
    fast = train_in_process(tmp_path / "memory", model="mlp", in_memory=True)
    slow = train_in_process(tmp_path / "loader", model="mlp", in_memory=False)
    assert type(fast.train_loader).__name__ == "InMemoryLoader" and type(slow.train_loader).__name__ == "DataLoader"
    a, b = trained_weights(fast), trained_weights(slow)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fast.evaluator.state.metrics == slow.evaluator.state.metrics


class ModeLog(nn.Module):
    """A linear model that logs every mode switch and the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 3)
        self.switches: list[bool] = []
        self.forwards: list[bool] = []

    def train(self, mode: bool = True) -> "ModeLog":
        self.switches.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards.append(self.inner.training)
        return self.inner(x)


def test_engines_switch_the_model_mode_only_when_it_changes():
    model = ModeLog()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = build_trainer(model, optimizer, "classification", CPU)
    evaluator = build_evaluator(model, "classification", CPU)
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(batches[:2]))
    model.eval()  # as check_model_fits leaves it only if it was in eval mode
    model.switches.clear()
    trainer.run(batches, max_epochs=2)
    # 3 training batches in train mode, 2 validation batches in eval mode, per epoch; one switch per change
    assert model.forwards == ([True] * 3 + [False] * 2) * 2
    assert model.switches == [True, False, True, False]
    assert not model.inner.training


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tmp_path, torch_threads):
    full = train_in_process(tmp_path / "fp32", model="mlp", amp="off")
    half = train_in_process(tmp_path / "bf16", model="mlp", amp="bf16")
    assert all(torch.isfinite(w).all() for w in trained_weights(half).values())
    loss32, loss16 = full.evaluator.state.metrics["loss"], half.evaluator.state.metrics["loss"]
    assert loss16 == pytest.approx(loss32, rel=0.1)
    assert half.evaluator.state.metrics["accuracy"] == pytest.approx(full.evaluator.state.metrics["accuracy"], abs=0.05)
    assert not torch.equal(trained_weights(half)["net.1.weight"], trained_weights(full)["net.1.weight"])  # bf16 really ran


def test_fp16_with_grad_scaler_on_cpu_stays_close_to_fp32_and_saves_the_scaler(tmp_path, torch_threads):
    if not fp16_on_cpu():
        pytest.skip("this torch build has no fp16 autocast on CPU")
    full = train_in_process(tmp_path / "fp32", model="mlp", amp="off")
    half = train_in_process(tmp_path / "fp16", model="mlp", amp="fp16")
    assert isinstance(half.to_save["scaler"], torch.amp.GradScaler) and "scaler" not in full.to_save
    assert half.to_save["scaler"].get_scale() > 0
    assert all(torch.isfinite(w).all() for w in trained_weights(half).values())
    assert half.evaluator.state.metrics["loss"] == pytest.approx(full.evaluator.state.metrics["loss"], rel=0.1)


def test_channels_last_trains_the_same_cnn_within_tolerance(tmp_path, torch_threads):
    plain = train_in_process(tmp_path / "nchw", model="cnn", channels_last=False)
    fast = train_in_process(tmp_path / "nhwc", model="cnn", channels_last=True)
    assert unwrap_model(fast.model).features[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = trained_weights(plain), trained_weights(fast)
    for name in a:
        torch.testing.assert_close(b[name].contiguous(), a[name].contiguous(), rtol=1e-3, atol=1e-4)


def linear_batches(count: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random classification batches for a dropout-free model."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=gen), torch.randint(0, 3, (size,), generator=gen)) for _ in range(count)]


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_grad_accum_2_with_batch_b_equals_batch_2b(optimizer):
    small = linear_batches(8, 16)
    large = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(small[::2], small[1::2])]
    cfg = Config(optimizer=optimizer, lr=0.05)
    results = []
    for batches, accum in ((small, 2), (large, 1)):
        model = tiny_model()
        trainer = build_trainer(model, make_optimizer(cfg, model), "classification", CPU, grad_accum=accum)
        trainer.run(batches, max_epochs=1)
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0]["0.weight"], tiny_model().state_dict()["0.weight"])  # it trained


def fp16_on_cpu() -> bool:
    """Whether this torch build runs fp16 autocast on the CPU."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_clip_grad_norm_bounds_the_norm_the_optimizer_sees(amp):
    if amp == "fp16" and not fp16_on_cpu():
        pytest.skip("this torch build has no fp16 autocast on CPU")
    model = tiny_model()
    optimizer = make_optimizer(Config(lr=0.01), model)  # fused Adam where torch has it
    before, after = [], []
    norm = lambda: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))  # noqa: E731
    optimizer.register_step_pre_hook(lambda *_: before.append(norm()))  # runs before the clipping hook
    add_gradient_clipping(optimizer, max_norm=0.5)
    optimizer.register_step_pre_hook(lambda *_: after.append(norm()))  # what the update uses
    batches = [(x * 50, y) for x, y in linear_batches(16, 16)]  # large inputs: large gradients
    trainer = build_trainer(model, optimizer, "classification", CPU, amp=amp, scaler=make_scaler(CPU, amp))
    trainer.run(batches, max_epochs=1)
    steps = [(b, a) for b, a in zip(before, after) if b < float("inf")]  # fp16 skips steps whose gradients overflowed
    assert len(steps) >= 4 and max(b for b, _ in steps) > 0.5
    assert max(a for _, a in steps) <= 0.5 + 1e-4
    assert max(b for b, _ in steps) < 1e4  # true gradients: fp16's GradScaler (scale 65536) unscaled them first


def test_loss_tracker_reads_a_window_at_once_and_round_trips_its_state():
    from ignite.engine import Engine, Events

    tracker = LossTracker(check_every=4)
    engine = Engine(lambda e, b: torch.tensor(float(b)))
    engine.add_event_handler(Events.ITERATION_COMPLETED, tracker.record)
    engine.run([1, 2, 3, 4, 5, 6], max_epochs=1)
    assert (tracker.total, tracker.count) == (10.0, 4) and len(tracker.pending) == 2
    state = tracker.state_dict()
    restored = LossTracker(check_every=10)  # --log-every may change on resume
    restored.load_state_dict(state)
    assert restored.values() == [5.0, 6.0] and (restored.total, restored.count) == (10.0, 4)


def test_background_saver_writes_a_snapshot_and_raises_a_failed_write_later(tmp_path, monkeypatch):
    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path))
    weight = torch.zeros(3)
    saver({"model": {"w": weight}}, "a.pt")
    weight += 1  # training goes on while the file is written: the file holds the snapshot
    saver.close()
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "a.pt", require_checksum=True)["model"]["w"], torch.zeros(3))

    saver = ckpt.BackgroundSaver(ckpt.AtomicSaver(tmp_path / "full", wrap_file=full_disk_from(2)))
    saver({"model": {"w": weight}}, "b.pt")
    saver.remove("b.pt")
    saver({"model": {"w": weight + 1}}, "c.pt")  # fails on the writer thread
    with pytest.raises(DiskFullError):
        saver.close()
    assert torch.equal(ckpt.read_checkpoint(tmp_path / "full" / "b.pt", require_checksum=True)["model"]["w"], weight)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["b.pt", "b.pt.sha256"]


IMPORT_CHECK = """
import gc, sys, torch
from ignite_app.fastimport import collection_paused, defer_modules, import_ignite
assert gc.get_freeze_count() == 0
import_ignite()
assert gc.isenabled() and gc.get_freeze_count() > 100_000  # torch's objects: skipped by later full collections
gc.disable()
with collection_paused():
    assert not gc.isenabled()
assert not gc.isenabled()  # left as it was found
gc.enable()
import ignite.handlers.checkpoint as c, ignite_app.train.loop
assert "torch.distributed.fsdp" not in sys.modules and "torch.distributed.optim" not in sys.modules
assert not isinstance(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), c.ZeroRedundancyOptimizer)
import torch.distributed.optim as real
assert isinstance(object.__new__(real.ZeroRedundancyOptimizer), c.ZeroRedundancyOptimizer)
from torch.distributed.optim import _NamedOptimizer
assert "DistributedOptimizer" in real.__all__ and torch.distributed.optim is real
import json
assert defer_modules(("json", "no_such_module_here")) == []  # imported or absent: left alone
assert "graphlib" not in sys.modules and defer_modules(("graphlib",)) == ["graphlib"]
import graphlib
assert "TopologicalSorter" not in vars(graphlib)  # imported, not yet run
assert list(graphlib.TopologicalSorter({"b": {"a"}}).static_order()) == ["a", "b"]  # runs on first use
print("ok")
"""


@pytest.mark.e2e  # a real process
def test_import_ignite_skips_unused_modules_and_they_still_work_when_used():
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_resnet_fits_cifar_shaped_batches():
    from ignite_app.data.sources import DataSpec
    from ignite_app.models import ResNet, build_model, check_model_fits

    model = build_model("ignite_app.models:ResNet", DataSpec("classification", (3, 32, 32), 10))
    assert isinstance(model, ResNet)
    check_model_fits(model, DataSpec("classification", (3, 32, 32), 10), torch.zeros(2, 3, 32, 32))


EPOCH_COLUMNS = ["variant", "s/epoch", "samples/s", "CPU s/epoch", "peak RSS MiB", "mem x plain", "launch to 1st iter s",
                 "first epoch s"]
RATIO_COLUMNS = ["variant", "time x plain", "time x fused", "time x floor", "CPU x plain", "CPU x fused", "CPU x floor"]
VARIANT_NAMES = ["plain loop (DataLoader)", "plain loop, fused Adam", "eager floor", "ignite_app, DataLoader path",
                 "ignite_app, in-memory path"]


def table(output: str) -> list[list[str]]:
    """The rows of the Markdown table that scripts/bench.py prints, header first."""
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def bench(*args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *args], env=cli_env(),
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.e2e  # a real process
def test_bench_prints_every_column_for_every_variant():
    out = bench("--repeat", "1", "--warmup", "1", "--epochs", "1", "--batch-size", "128")
    rows = table(out)
    split = [i for i, row in enumerate(rows) if row[0] in ("variant", "ignite_app variant")]
    times, ratios, intervals = rows[: split[1]], rows[split[1]: split[2]], rows[split[2]:]
    assert times[0] == EPOCH_COLUMNS and ratios[0] == RATIO_COLUMNS
    assert [r[0] for r in times[1:]] == VARIANT_NAMES and [r[0] for r in ratios[1:]] == VARIANT_NAMES
    number = re.compile(r"^[\d,.]+( \([\d.]+-[\d.]+\))?$")
    for header, body in ((EPOCH_COLUMNS, times[1:]), (RATIO_COLUMNS, ratios[1:])):
        for row in body:
            assert len(row) == len(header) and all(number.match(cell) for cell in row[1:]), row
    for i, base in enumerate(("plain", "fused", "floor")):  # every baseline divided by itself is exactly 1
        assert ratios[1 + i][1 + i] == "1.000 (1.000-1.000)" and ratios[1 + i][4 + i] == "1.000 (1.000-1.000)", base
    assert "1438 train samples" in out and re.search(r"machine: .*torch 2\.\d+.*threads 1", out)
    assert intervals[0] == ["ignite_app variant", "CPU x fused: median [95% interval]", "CPU x floor: median [95% interval]"]
    assert [r[0] for r in intervals[1:]] == VARIANT_NAMES[3:]
    for row in intervals[1:]:  # one round: the interval is that round's ratio, which the ratio table shows too
        for cell, ratio in zip(row[1:], (ratios[VARIANT_NAMES.index(row[0]) + 1][5], ratios[VARIANT_NAMES.index(row[0]) + 1][6])):
            median, low, high = map(float, re.match(r"^([\d.]+) \[([\d.]+)-([\d.]+)\]$", cell).groups())
            assert low == median == high == float(ratio.split()[0])


@pytest.mark.e2e  # a real process
def test_bench_whole_run_times_train_against_both_plain_scripts():
    out = bench("--whole-run", "--model", "mlp", "--reps", "1", "--whole-epochs", "1")
    rows = table(out)
    assert rows[0] == ["command", "wall s", "time x plain", "time x fused", "CPU s", "CPU x plain", "CPU x fused",
                       "peak RSS MiB"]
    assert [r[0] for r in rows[1:]] == ["python scripts/plain_loop.py", "python scripts/plain_loop.py --fused",
                                        "python scripts/train.py"]
    assert rows[2][3] == "1.000 (1.000-1.000)" and "1 epochs each" in out


def test_the_plain_loop_with_fused_adam_takes_the_same_steps_as_the_default(monkeypatch):
    """The like-for-like baseline changes only the optimizer's kernel, not what it computes."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from plain_loop import make_optimizer, train_epoch

    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = make_optimizer(model, fused)
        assert optimizer.defaults["fused"] is (True if fused else None)
        train_epoch(model, optimizer, torch.nn.CrossEntropyLoss(), data, torch.device("cpu"))
        weights.append(model.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1])


def test_compile_mode_reaches_torch_compile(monkeypatch):
    from ignite_app.train import build as app

    seen = {}

    def fake_compile(model, mode=None):
        seen["mode"] = mode
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Linear(2, 2)
    assert app.wrap_model(model, torch.device("cpu"), True, "reduce-overhead") is model
    assert seen["mode"] == "reduce-overhead"
    seen.clear()
    app.wrap_model(model, torch.device("cpu"), False, "reduce-overhead")
    assert seen == {}


@pytest.mark.e2e  # real processes
def test_bench_inference_times_both_commands_against_the_plain_script():
    out = bench("--inference", "--rows", "2000", "--reps", "2")  # the second repetition writes over the first's output
    rows = table(out)
    assert rows[0] == ["command", "wall s", "time x plain", "CPU s", "CPU x plain", "peak RSS MiB"]
    assert [r[0] for r in rows[1:]] == ["plain predict", "ignite-app predict", "plain evaluate", "ignite-app evaluate"]
    assert rows[1][2] == rows[3][2] == "1.000 (1.000-1.000)" and "2,000 rows" in out


@pytest.mark.e2e  # real processes, two of them under torchrun
def test_bench_distributed_times_one_process_against_torchruns_two_for_both_loops():
    out = bench("--distributed", "--model", "mlp", "--whole-epochs", "2", "--reps", "1")
    rows = table(out)
    assert rows[0] == ["command", "s/epoch", "speed x 1 process (same code)", "time x plain 1x1", "wall s, 2 epochs",
                       "wall s, 1 epoch"]
    labels = [r[0] for r in rows[1:]]
    assert labels[2].startswith("plain DDP") and "torchrun 2 processes" in labels[5] and len(labels) == 6
    assert rows[1][2] == rows[4][2] == "1.000 (1.000-1.000)"  # each loop against itself in one process
    assert all(float(r[4].split()[0]) > 0 for r in rows[1:])


@pytest.mark.e2e  # a real process
def test_bench_validation_times_the_evaluator_against_the_raw_pass():
    rows = table(bench("--validation", "--repeat", "1", "--warmup", "0", "--epochs", "2"))
    assert rows[0] == ["pass", "wall s", "time x raw", "CPU s", "CPU x raw"]
    assert [r[0] for r in rows[1:]] == ["raw no_grad pass", "ignite_app evaluator"]
    assert rows[1][2] == "1.000 (1.000-1.000)"


@pytest.mark.e2e  # a real process
def test_bench_logging_cost_times_three_builds_of_the_run_against_the_floor():
    rows = table(bench("--logging-cost", "--repeat", "1", "--warmup", "0", "--epochs", "2"))
    assert rows[0] == ["variant", "CPU s/epoch", "CPU x floor", "CPU x floor: median [95% interval]"]
    assert [r[0] for r in rows[1:]] == ["eager floor", "ignite_app, in-memory path, as built",
                                        "in-memory path, scalars written at each call", "in-memory path, --log-every 1000000, no bar"]
    assert rows[1][2] == "1.000 (1.000-1.000)" and rows[1][3] == "1.000 [1.000-1.000]"
    assert all(float(r[1].split()[0]) > 0 for r in rows[1:])


def test_the_bootstrap_interval_holds_the_median_and_narrows_with_more_rounds(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import random

    import bench

    rng = random.Random(1)
    widths = []
    for rounds in (9, 400):
        ratios = [1.1 + rng.gauss(0, 0.15) for _ in range(rounds)]
        median, low, high = map(float, re.match(r"^([\d.]+) \[([\d.]+)-([\d.]+)\]$", bench.interval(ratios)).groups())
        assert low <= median <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(44) of the width: far narrower with 400 rounds
    assert 1.05 < low and high < 1.15  # and around the true median, 1.1


def test_bench_overhead_times_ignite_step_on_the_floors_batches_doing_the_floors_work(monkeypatch, tmp_path, torch_threads):
    """--overhead compares like with like: Ignite's step as built takes exactly the floor's steps (same weights after)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import bench

    args = bench.parse_args(["--repeat", "1"])
    work = bench.workload(args, bench.write_data("digits", 1, args.samples, tmp_path), epochs=2)
    floor, pipe = bench.Floor(work, CPU), bench.Pipeline(work, CPU, True, tmp_path / "run")
    try:
        before = [t.clone() for t in pipe.run.raw_model.state_dict().values()]
        assert all(torch.equal(a, b) for a, b in zip(floor.model.state_dict().values(), before))
        floor_steps, ignite_steps = bench.step_runners(floor, pipe.run.trainer._process_function)
        for run in (floor_steps, ignite_steps):
            torch.manual_seed(7)  # the same dropout masks
            run()
        after = pipe.run.raw_model.state_dict()
        assert not all(torch.equal(a, b) for a, b in zip(after.values(), before))  # it trained
        for (name, a), b in zip(floor.model.state_dict().items(), after.values()):
            assert torch.equal(a, b), name
    finally:
        pipe.close()


@pytest.mark.e2e  # a real process
def test_bench_overhead_prints_each_part_and_their_sum_against_the_whole():
    rows = table(bench("--overhead", "--repeat", "1", "--warmup", "0", "--epochs", "2"))
    assert rows[0] == ["part", "CPU ms/epoch", "adds ms/epoch", "adds % of the floor's epoch"]
    assert [r[0] for r in rows[1:]] == [
        "eager floor: training steps", "Ignite's training step as built, the floor's batches", "eager floor: validation pass",
        "ignite_app: validation (evaluator)", "ignite_app: engine, loader, handlers (trivial step, no validation)",
        "sum of the parts", "measured: the whole in-memory path against the whole floor"]
    adds = {r[0]: float(r[2]) for r in rows[1:] if r[2]}
    assert len(adds) == 4  # three ignite_app parts and their sum
    assert abs(sum(v for k, v in adds.items() if k != "sum of the parts") - adds["sum of the parts"]) < 0.02
    assert all(float(r[1].split()[0]) > 0 for r in rows[1:6])
