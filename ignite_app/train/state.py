"""Training state that is not a torch object with a ``state_dict`` of its own: RNGs, gradients, facts.

Each class has ``state_dict``/``load_state_dict`` of plain tensors, ints, floats and strings, so that a
checkpoint still loads with ``torch.load(weights_only=True)``. A new piece of resumable state goes here
(or is an object with those two methods) and into ``to_save`` in :func:`ignite_app.train.build.attach_checkpointers`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


class RNGState:
    """The torch, CUDA, numpy and Python RNG states, stored as tensors and plain numbers."""

    def state_dict(self) -> dict[str, Any]:
        """Capture every global RNG the training step can draw from."""
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, py_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss),
            "numpy_cached_gaussian": float(cached),
            "python_version": int(version),
            "python_state": torch.tensor(py_state, dtype=torch.int64),
            "python_gauss": gauss,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the RNGs; CUDA states are skipped on a machine without the same GPUs."""
        torch.set_rng_state(state["torch"].cpu())
        cuda = state.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
        random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))


class GradState:
    """Accumulated gradients, saved only when ``--grad-accum`` > 1 (a save may fall mid-window)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        """Gradients by parameter name (missing ones are absent)."""
        return {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put saved gradients back on their parameters."""
        for name, param in self.model.named_parameters():
            param.grad = state[name].to(param.device).clone() if name in state else None


@dataclass
class Meta:
    """Plain facts about a checkpoint, checked before anything is loaded."""

    values: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """The facts as a dict of plain values."""
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Meta is only read, never restored."""
