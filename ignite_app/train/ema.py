"""An exponential moving average of the weights (``--ema-decay``), by Ignite's ``EMAHandler``.

After every optimizer step, ``ema = decay * ema + (1 - decay) * weights``; buffers (batch-norm
statistics) are the training model's own. Validation, the best checkpoint, ``evaluate``,
``predict`` and ``export`` use the averaged copy; the resumable checkpoint holds it as ``ema``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn


def make_ema(model: nn.Module, decay: float | None) -> EMAHandler | None:
    """Ignite's EMAHandler over the bare ``model`` (its momentum is ``1 - decay``), or None without ``--ema-decay``."""
    if decay is None:
        return None
    return EMAHandler(model, momentum=1.0 - decay)


def attach_ema(ema: EMAHandler, trainer: Engine, grad_accum: int) -> None:
    """Update the average after every optimizer step (every ``grad_accum`` iterations)."""
    ema.attach(trainer, name="ema_momentum", warn_if_exists=False, event=Events.ITERATION_COMPLETED(every=grad_accum))


def evaluated_model(model: nn.Module, ema: EMAHandler | None) -> nn.Module:
    """What validation runs and the best checkpoint saves: the average when there is one."""
    return ema.ema_model if ema is not None else model


def inference_weights(state: Mapping[str, Any]) -> Any:
    """The weights a checkpoint's model is used with: the EMA copy of a training checkpoint if it has one."""
    ema = state.get("ema")
    return ema if isinstance(ema, Mapping) else state.get("model")
