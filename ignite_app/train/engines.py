"""The trainer and the evaluator, from Ignite's ``create_supervised_trainer`` and ``create_supervised_evaluator``.

Ignite's steps do the work (zero_grad, batch to the device, forward, loss, backward, step,
gradient accumulation; ``no_grad`` evaluation in eval mode). We only plug their documented hooks:
``prepare_batch`` (device, channels_last, target dtype and shape), ``model_fn`` (autocast, on CPU
and CUDA) and ``output_transform`` (the loss stays a device tensor: no host sync per iteration).
Both engines get the model through a :class:`ModeSwitch`, whose ``train()``/``eval()`` only walk
the modules when the mode changes (the steps ask for the mode on every batch: ~5% of a small
model's CPU epoch). Gradient clipping runs as an optimizer step pre-hook. fp16 needs a
GradScaler, which Ignite's factory offers on CUDA only and without unscaling before the step:
that one case uses :func:`training_step`, built the same way, which unscales first so that
clipping sees true gradients. ``--cuda-graph`` records Ignite's ``supervised_training_step``
(the step ``create_supervised_trainer`` wraps) and replays it (:mod:`ignite_app.train.cudagraph`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import (
    Engine,
    create_supervised_evaluator,
    create_supervised_trainer,
    supervised_training_step,
)
from ignite.metrics import Metric
from torch import nn

from ignite_app.train.metrics import attach_tables, loss_for, metrics_for

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_prepare_batch(task: str, channels_last: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Move ``(x, y)`` to the device; (N,) regression targets become (N, 1) like the model output."""

    def prepare(batch: Sequence[torch.Tensor], device: Any = None, non_blocking: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = x.to(device=device, non_blocking=non_blocking)
        y = y.to(device=device, non_blocking=non_blocking)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if task == "regression":
            y = y.float()
            if y.ndim == 1:
                y = y.unsqueeze(1)
        else:
            y = y.long()  # CrossEntropyLoss rejects int32/int16 labels; a no-op for int64
        return x, y

    return prepare


def make_model_fn(device: torch.device, amp: str, cache: bool = True) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Forward pass, under autocast when ``amp`` asks for it; the output is cast back to fp32 for the loss.

    ``cache=False`` turns off autocast's cache of cast weights, which a CUDA graph recording must not use.
    """
    if amp == "off":
        return lambda model, x: model(x)
    dtype = AMP_DTYPES[amp]

    def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache):
            out = model(x)
        return out.float()

    return forward


class ModeSwitch:
    """The model as the engines see it: calls go to the module; ``train()``/``eval()`` only switch on a change.

    ``nn.Module.train`` sets the flag on every submodule through ``__setattr__`` each time it is
    called. Here the top module's flag decides: every mode change in ignite_app goes through it, so
    when it already holds the asked mode, so do the submodules (including a model whose own
    ``train()`` keeps some parts frozen, since that override is what runs on a change).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> ModeSwitch:
        if self.module.training != mode:
            self.module.train(mode)
        return self

    def eval(self) -> ModeSwitch:
        return self.train(False)


def keep_loss_on_device(x: Any, y: Any, y_pred: Any, loss: torch.Tensor) -> torch.Tensor:
    """``output_transform`` returning the detached loss tensor instead of Ignite's default ``loss.item()``."""
    return loss.detach()


def add_gradient_clipping(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the global gradient norm just before every optimizer step (after any unscaling)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    optimizer.register_step_pre_hook(clip)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only: bf16 and fp32 keep the fp32 exponent range."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def build_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: str,
    device: torch.device,
    *,
    amp: str = "off",
    channels_last: bool = False,
    grad_accum: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    graph_batch_size: int | None = None,
    class_weights: torch.Tensor | None = None,
    graph_fallback: Callable[[str], None] | None = None,
) -> Engine:
    """The training engine; its output is the batch loss as a device tensor.

    With ``graph_batch_size``, Ignite's step is recorded once and replayed as a CUDA graph for
    batches of that size (:mod:`ignite_app.train.cudagraph`).
    """
    prepare, non_blocking = make_prepare_batch(task, channels_last), device.type == "cuda"
    loss_fn = loss_for(task, class_weights)
    model_fn = make_model_fn(device, amp, cache=graph_batch_size is None)  # a graph recording must not use autocast's cache
    handle = ModeSwitch(model)
    if graph_batch_size is not None:
        from ignite_app.train.cudagraph import GraphedStep

        step = supervised_training_step(handle, optimizer, loss_fn, device=device, non_blocking=non_blocking,  # type: ignore[arg-type]
                                        prepare_batch=prepare, output_transform=keep_loss_on_device, model_fn=model_fn)
        return Engine(GraphedStep(step, model, optimizer, device, graph_batch_size, fallback=graph_fallback))
    if scaler is not None:
        return Engine(training_step(handle, optimizer, loss_fn, device, prepare, model_fn, scaler, grad_accum, non_blocking))  # type: ignore[arg-type]
    return create_supervised_trainer(
        handle, optimizer, loss_fn, device=device, non_blocking=non_blocking, prepare_batch=prepare,  # type: ignore[arg-type]
        output_transform=keep_loss_on_device, gradient_accumulation_steps=grad_accum, model_fn=model_fn,
    )


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    model_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    scaler: torch.amp.GradScaler,
    grad_accum: int,
    non_blocking: bool,
) -> Callable[[Engine, Any], torch.Tensor]:
    """Ignite's supervised training step with a GradScaler on any device; returns the detached loss."""

    def update(engine: Engine, batch: Any) -> torch.Tensor:
        if (engine.state.iteration - 1) % grad_accum == 0:
            optimizer.zero_grad()
        model.train()
        x, y = prepare_batch(batch, device=device, non_blocking=non_blocking)
        loss = loss_fn(model_fn(model, x), y)
        scaler.scale(loss / grad_accum if grad_accum > 1 else loss).backward()
        if engine.state.iteration % grad_accum == 0:
            scaler.unscale_(optimizer)  # true gradients for the clipping pre-hook, even with fused optimizers
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return update


def build_evaluator(
    model: nn.Module,
    task: str,
    device: torch.device,
    *,
    amp: str = "off",
    channels_last: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    to_units: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Engine:
    """The ``no_grad`` evaluation engine with ``metrics`` (default: the task's loss and accuracy or MAE) attached."""
    evaluator = create_supervised_evaluator(
        ModeSwitch(model), metrics=dict(metrics or metrics_for(task, device, to_units=to_units)), device=device,
        non_blocking=device.type == "cuda", prepare_batch=make_prepare_batch(task, channels_last),
        model_fn=make_model_fn(device, amp),
    )
    attach_tables(evaluator)  # after the metrics: a confusion matrix leaves state.metrics for state.tables
    return evaluator
