"""``--cuda-graph``: Ignite's step recorded once and replayed gives what the eager step gives.

On a CPU the recording is stood in for by :class:`StaticRecorder`, which keeps the CUDA graph's
contract (the step runs on static input buffers and writes one static output, overwritten by every
replay), so the bookkeeping around it is tested here: the warm-up undone, batches copied in, the
loss copied out, partial batches run eagerly, the learning rate refreshed, resume. The real
``torch.cuda.graph`` recording is tested by the two CUDA tests at the end, on a GPU machine
(``scripts/gpu_check.sh speed``): against the eager step, and across a stop and a resume.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from conftest import (
    assert_one_error_line,
    invoke_app,
    run_train,
    train_in_process,
    trained_weights,
)

from ignite_app.train import cudagraph
from ignite_app.train import build as app
from ignite_app.train import loop
from ignite_app.train.loop import train
from ignite_app.config import Config
from ignite_app.train.cudagraph import GraphedStep
from ignite_app.errors import UserError

CPU = torch.device("cpu")


class StaticRecorder:
    """Replays by running the step again and writing its loss into one static tensor, as a graph would."""

    def warm_up(self, fn: Callable[[], Any], times: int) -> None:
        for _ in range(times):
            fn()

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        static = fn().clone()

        def replay() -> torch.Tensor:
            static.copy_(fn())
            return static

        return replay


@pytest.fixture
def static_recorder(monkeypatch):
    monkeypatch.setattr(cudagraph, "CudaRecorder", lambda device: StaticRecorder())


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_replayed_steps_train_exactly_what_ignites_eager_step_trains(tmp_path, torch_threads, static_recorder, amp):
    common = {"epochs": 2, "model": "mlp", "lr_schedule": "cosine", "amp": amp}
    graphed = train_in_process(tmp_path / "graph", cuda_graph=True, **common)
    eager = train_in_process(tmp_path / "eager", **common)
    step = graphed.trainer._process_function
    assert isinstance(step, GraphedStep)
    # digits: 1437 training samples = 22 batches of 64 and one of 29, per epoch; dropout is on (mlp)
    assert (step.replays, step.eager_steps) == (44, 2)
    a, b = trained_weights(graphed), trained_weights(eager)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert graphed.trainer.state.metrics["train_loss"] == eager.trainer.state.metrics["train_loss"]
    assert graphed.evaluator.state.metrics == eager.evaluator.state.metrics
    # the cosine schedule reached the graph's learning-rate tensor: the last replay (iteration 45 of 46)
    # ran at 1e-3 * (1 + cos(pi * 44 / 46)) / 2; the optimizer keeps a plain float for checkpoints
    assert step.lr[0].item() == pytest.approx(1e-3 * (1 + math.cos(math.pi * 44 / 46)) / 2, rel=1e-5)
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], float)


def test_a_graphed_run_resumed_from_its_checkpoint_ends_as_the_uninterrupted_one(tmp_path, torch_threads, static_recorder, monkeypatch):
    monkeypatch.setattr(loop, "pick_device", lambda cfg: CPU)  # --cuda-graph on this CPU, through train()
    base: dict[str, Any] = {"dataset": "digits", "model": "mlp", "patience": 0, "progress": False, "device": "cpu",
                            "cuda_graph": True, "lr_schedule": "cosine"}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train(Config(epochs=3, output_dir=str(whole), **base), echo=lambda line: None) == 0
    assert train(Config(epochs=3, output_dir=str(parts), time_limit=1e-9, **base), echo=lambda line: None) == 0
    first = sorted((parts / "checkpoints").glob("checkpoint_*.pt"))
    assert [p.name for p in first] == ["checkpoint_1.pt"]  # stopped after the first (replayed) step
    assert train(Config(epochs=3, output_dir=str(parts), resume=str(parts), **base), echo=lambda line: None) == 0
    end_whole = torch.load(whole / "checkpoints" / "checkpoint_69.pt", weights_only=True)
    end_parts = torch.load(parts / "checkpoints" / "checkpoint_69.pt", weights_only=True)
    assert all(torch.equal(end_whole["model"][k], end_parts["model"][k]) for k in end_whole["model"])
    assert torch.equal(end_whole["optimizer"]["state"][0]["exp_avg"], end_parts["optimizer"]["state"][0]["exp_avg"])


class RefusingRecorder(StaticRecorder):
    """Fails to record, as torch.cuda.graph does when the step reads a value on the host."""

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        fn()
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


def test_a_step_that_cannot_be_recorded_is_one_clear_error_and_changes_nothing():
    from ignite.engine import Engine, supervised_training_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = supervised_training_step(model, optimizer, torch.nn.CrossEntropyLoss(), output_transform=lambda x, y, p, loss: loss)
    graphed = GraphedStep(step, model, optimizer, CPU, batch_size=5, recorder=RefusingRecorder())
    engine = Engine(graphed)
    batch = (torch.randn(5, 4), torch.randint(0, 3, (5,)))
    with pytest.raises(UserError, match=r"^--cuda-graph could not record this model's training step "
                                        r"\(CUDA error: operation not permitted when stream is capturing\); drop --cuda-graph"):
        graphed(engine, batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the warm-up was undone
    assert all(t.abs().sum() == 0 for s in optimizer.state.values() for t in s.values())  # Adam as new
    assert optimizer.param_groups[0]["lr"] == 1e-3 and isinstance(optimizer.param_groups[0]["lr"], float)


@pytest.mark.parametrize("flags, match", [
    (["--amp", "fp16"], "--cuda-graph does not work with --amp fp16"),
    (["--grad-accum", "2"], "--cuda-graph does not work with --grad-accum 2"),
    (["--compile"], "--cuda-graph does not work with --compile"),
    (["--optimizer", "sgd"], "--cuda-graph does not work with --optimizer sgd"),
    (["--device", "cpu"], "--cuda-graph needs a CUDA device, not cpu"),
])
def test_cuda_graph_refuses_what_it_cannot_record(tmp_path, flags, match):
    out = tmp_path / "run"
    result = invoke_app("train", "--cuda-graph", "--output-dir", str(out), "--epochs", "1", *flags)
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_recorded_graph_trains_like_the_eager_step(tmp_path):
    runs = {}
    for name, extra in {"eager": [], "graph": ["--cuda-graph"]}.items():
        out = tmp_path / name
        done = run_train("--device", "cuda:0", "--epochs", "3", "--patience", "0", "--no-progress", "--deterministic",
                         "--lr-schedule", "cosine", "--output-dir", str(out), *extra)
        assert done.returncode == 0, done.stderr
        runs[name] = torch.load(out / "checkpoints" / "checkpoint_69.pt", weights_only=True, map_location="cpu")
    a, b = runs["eager"]["model"], runs["graph"]["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4), key
    assert runs["graph"]["optimizer"]["param_groups"][0]["capturable"] is False  # checkpoints load on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_graphed_run_stopped_after_its_first_replay_resumes_exactly(tmp_path):
    common = ["--device", "cuda:0", "--epochs", "2", "--patience", "0", "--no-progress", "--deterministic",
              "--lr-schedule", "cosine", "--cuda-graph"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_train(*common, "--output-dir", str(whole)).returncode == 0
    first = run_train(*common, "--output-dir", str(parts), "--time-limit", "0.000001")
    assert first.returncode == 0 and "iteration 1 " in first.stdout, first.stdout + first.stderr
    done = run_train("--resume", str(parts), "--no-progress", "--time-limit", "1h")  # the limit is kept on resume
    assert done.returncode == 0 and "done: 2 epoch(s)" in done.stdout, done.stdout + done.stderr
    a, b = (torch.load(run / "checkpoints" / "checkpoint_46.pt", weights_only=True, map_location="cpu") for run in (whole, parts))
    diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), f"max abs difference {diff:.3g}"


# --- issue 16: on by default where it can record -------------------------------------------------

CUDA = torch.device("cuda", 0)  # a device object only: nothing runs on it here


@pytest.mark.parametrize("options, device, distributed, expected", [
    ({}, CUDA, False, True),
    ({"optimizer": "adamw", "amp": "bf16"}, CUDA, False, True),
    ({}, CPU, False, False),
    ({}, CUDA, True, False),
    ({"optimizer": "sgd"}, CUDA, False, False),
    ({"amp": "fp16"}, CUDA, False, False),
    ({"grad_accum": 2}, CUDA, False, False),
    ({"compile": True}, CUDA, False, False),
    ({"cuda_graph": False}, CUDA, False, False),
    ({"cuda_graph": True}, CUDA, False, True),
])
def test_graphs_are_on_by_default_only_where_the_step_can_be_recorded(options, device, distributed, expected):
    assert cudagraph.wants_cuda_graph(Config(**options), device, distributed) is expected


def test_an_automatic_graph_that_cannot_be_recorded_trains_eagerly_after_one_note():
    from ignite.engine import Engine, supervised_training_step

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        step = supervised_training_step(model, optimizer, torch.nn.CrossEntropyLoss(), output_transform=lambda x, y, p, loss: loss)
        return model, optimizer, step

    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(4)]
    model, optimizer, step = make()
    notes: list[str] = []
    graphed = GraphedStep(step, model, optimizer, CPU, batch_size=5, recorder=RefusingRecorder(), fallback=notes.append)
    Engine(graphed).run(batches, max_epochs=1)
    eager_model, _, eager_step = make()
    Engine(eager_step).run(batches, max_epochs=1)
    assert len(notes) == 1 and notes[0].startswith("the training step could not be recorded as a CUDA graph (CUDA error")
    assert (graphed.replays, graphed.eager_steps) == (0, 4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager_model.state_dict().values()))


def test_a_default_run_records_the_step_where_graphs_are_on(tmp_path, torch_threads, static_recorder, monkeypatch):
    monkeypatch.setattr(app, "wants_cuda_graph", lambda cfg, device, distributed: cfg.cuda_graph is None)  # as on a GPU
    run = train_in_process(tmp_path / "auto", model="mlp")
    step = run.trainer._process_function
    assert isinstance(step, GraphedStep) and step.fallback is not None and step.replays == 22
    assert not isinstance(train_in_process(tmp_path / "off", model="mlp", cuda_graph=False).trainer._process_function, GraphedStep)
