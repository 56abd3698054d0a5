"""The one place that turns ``--device`` into a :class:`torch.device`."""

from __future__ import annotations

import re

import torch

from ignite_app.errors import UserError

_DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def available_devices() -> list[str]:
    """The devices this machine has, as ``--device`` values."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(spec: str) -> torch.device:
    """Parse and check a device name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    match = _DEVICE_SPEC.match(spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"invalid --device {spec!r}: use auto, cpu, cuda, cuda:N or mps ({_have()})")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device mps is not available on this machine ({_have()})")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec} is not available: this machine has no CUDA GPU ({_have()})")
    number = int(index) if index is not None else torch.cuda.current_device()
    if number >= torch.cuda.device_count():
        raise UserError(f"--device {spec} is not available ({_have()})")
    return torch.device("cuda", number)


def _have() -> str:
    return "this machine has: " + ", ".join(available_devices())
