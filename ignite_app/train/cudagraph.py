"""``--cuda-graph``: Ignite's training step recorded once as a CUDA graph, then replayed per batch.

A small model on a fast GPU waits on the CPU: Python, the autograd engine and one kernel launch
per operation cost more than the kernels. Recording the whole step (zero_grad, forward, loss,
backward, gradient clipping, the fused Adam update) as one graph makes a batch cost one copy
into static input buffers and one replay.

The step recorded is Ignite's own ``supervised_training_step`` (what ``create_supervised_trainer``
wraps in an Engine), called on static batch buffers. Recording needs a few warm-up steps first
(cuBLAS handles, optimizer state); they would change the weights, so the model, the optimizer
state and the RNG are copied before and written back after: the first replay starts from
exactly the state the eager path would. Batches of another size (an epoch's last, partial
batch) run Ignite's step eagerly on the same weights and optimizer.

Limits, checked where the run is built: one CUDA process, Adam or AdamW, ``--amp off|bf16``
(fp16's GradScaler decides on the host), ``--grad-accum 1``, no ``--compile``. The learning
rate may change (schedules): the graph reads it from a device tensor that is refreshed from the
optimizer before each replay.

Without ``--cuda-graph`` or ``--no-cuda-graph`` the step is recorded wherever those limits allow
(:func:`wants_cuda_graph`); a step that then cannot be recorded runs eagerly after one note line
instead of stopping the run.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Protocol

import torch
from ignite.engine import Engine
from torch import nn

from ignite_app.errors import UserError, first_line

Step = Callable[[Engine, Any], torch.Tensor]


def wants_cuda_graph(cfg: Any, device: torch.device, distributed: bool) -> bool:
    """``--cuda-graph``/``--no-cuda-graph`` as given; unset: on for one CUDA process whose options it can record."""
    if cfg.cuda_graph is not None:
        return bool(cfg.cuda_graph)
    return (device.type == "cuda" and not distributed and cfg.optimizer in ("adam", "adamw") and cfg.amp != "fp16"
            and cfg.grad_accum == 1 and not cfg.compile)


def note_on_stderr(line: str) -> None:
    """One note line on stderr."""
    print(f"note: {line}", file=sys.stderr)


class Recorder(Protocol):
    """How a step function is turned into something replayable."""

    def warm_up(self, fn: Callable[[], Any], times: int) -> None: ...

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]: ...


class CudaRecorder:
    """Warm-up on a side stream, then ``torch.cuda.graph`` capture; replay returns the static output."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph: torch.cuda.CUDAGraph | None = None

    def warm_up(self, fn: Callable[[], Any], times: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(times):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader's pin-memory thread may allocate while this thread records
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            out = fn()
        graph = self.graph

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay


class GraphedStep:
    """An Engine process function: copy the batch into static buffers and replay the recorded step."""

    WARMUP_STEPS = 3

    def __init__(self, step: Step, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 batch_size: int, recorder: Recorder | None = None,
                 fallback: Callable[[str], None] | None = None) -> None:
        self.step, self.model, self.optimizer, self.device = step, model, optimizer, device
        self.fallback = fallback  # automatic recording: a step that cannot be recorded says so here and runs eagerly
        self.eager_only = False
        self.batch_size = batch_size
        self.recorder = recorder if recorder is not None else CudaRecorder(device)
        self.replay: Callable[[], torch.Tensor] | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lr: list[torch.Tensor] = []
        self.lr_seen: list[float] = []
        self.grads: list[torch.Tensor | None] = []
        self.eager_steps = 0
        self.replays = 0

    def __call__(self, engine: Engine, batch: Any) -> torch.Tensor:
        x, y = batch
        if len(x) != self.batch_size or self.eager_only:  # a partial batch: Ignite's step, eagerly
            return self._eager(engine, batch)
        if self.replay is None:
            self._record(engine, x, y)
            if self.eager_only:
                return self._eager(engine, batch)
        assert self.static is not None and self.replay is not None
        self.static[0].copy_(x, non_blocking=True)
        self.static[1].copy_(y, non_blocking=True)
        self._refresh_lr()
        if not self.model.training:  # the graph trains in train mode; keep the module's flag saying so
            self.model.train()
        self.replays += 1
        return self.replay().clone()  # the static loss is overwritten by the next replay

    def _eager(self, engine: Engine, batch: Any) -> torch.Tensor:
        self.eager_steps += 1
        loss = self.step(engine, batch)
        with torch.no_grad():  # p.grad again names the graph's gradient buffers, now holding this step's
            for p, g in zip(self._params(), self.grads):
                if g is not None and p.grad is not None:
                    g.copy_(p.grad)
                    p.grad = g
        return loss

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _record(self, engine: Engine, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static = (x.to(self.device, copy=True), y.to(self.device, copy=True))
        saved = self._snapshot()
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        capturable = [group.get("capturable", False) for group in groups]
        self.lr = [torch.tensor(float(lr), dtype=torch.float32, device=self.device) for lr in floats]
        for group, lr in zip(groups, self.lr):
            group["lr"] = lr  # the graph reads the learning rate from this tensor
            if self.device.type == "cuda":
                group["capturable"] = True
        try:
            def run() -> torch.Tensor:
                return self.step(engine, self.static)

            self.recorder.warm_up(run, self.WARMUP_STEPS)
            self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's memory
            try:
                self.replay = self.recorder.record(run)
            except RuntimeError as exc:  # e.g. a model that reads a value on the host (.item(), data-dependent shapes)
                if self.fallback is not None:
                    self.fallback(f"the training step could not be recorded as a CUDA graph ({first_line(exc)}); "
                                  "training eagerly (--no-cuda-graph skips the attempt)")
                    self.eager_only = True
                    return
                raise UserError(f"--cuda-graph could not record this model's training step ({first_line(exc)}); "
                                "drop --cuda-graph for this model") from None
            self.grads = [p.grad for p in self._params()]
        finally:
            for group, lr, flag in zip(groups, floats, capturable):
                group["lr"], group["capturable"] = lr, flag  # checkpoints keep plain floats and flags
            self._restore(saved)
        self.lr_seen = [float("nan")] * len(self.lr)

    def _refresh_lr(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            lr = group["lr"]
            if lr != self.lr_seen[i]:
                self.lr[i].fill_(float(lr))
                self.lr_seen[i] = lr

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def _snapshot(self) -> dict[str, Any]:
        with torch.no_grad():
            optim = {id(t): t.clone() for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
            return {
                "model": [t.detach().clone() for t in self._state_tensors()],
                "optimizer": optim,
                "rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state(),
            }

    def _restore(self, saved: dict[str, Any]) -> None:
        """Undo the warm-up: weights, buffers and RNG as they were; optimizer state as it was (new state: zeros,
        which is how Adam starts its moments and step count)."""
        with torch.no_grad():
            for t, old in zip(self._state_tensors(), saved["model"]):
                t.copy_(old)
            for state in self.optimizer.state.values():
                for t in state.values():
                    if isinstance(t, torch.Tensor):
                        old = saved["optimizer"].get(id(t))
                        t.copy_(old) if old is not None else t.zero_()
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"], self.device)
        else:
            torch.set_rng_state(saved["rng"])
