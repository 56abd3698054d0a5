"""Copies of a checkpoint's tensors in CPU memory, taken in one pass on the training thread.

A copy is reused only by snapshots of the same *generation* (the caller's clock: the training
step), so the best model's snapshot and the training checkpoint's, taken at the same epoch end,
share the weights: together they hold one copy of the state, not two. The autograd version
counter alone cannot tell that a tensor changed: torch's fused Adam updates the weights and its
moments in place without bumping it (torch 2.13, ``tests/unit/test_snapshot.py``), so a cache
keyed on it handed the next epoch's best model the previous epoch's weights whenever a write was
still in flight. Once the snapshots are written, their copies become the buffers of the next
ones: copying into memory already touched costs no page faults (a third of a fresh 200 MB copy's
time on the 2-core CPU).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch

_Key = tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype, torch.device]


class _Entry(NamedTuple):
    source: torch.Tensor  # kept alive, so its memory (part of the key) cannot be reused meanwhile
    version: int
    generation: Any
    copy: torch.Tensor


class Snapshots:
    """A cache of CPU copies of checkpoint tensors; :meth:`take` copies a whole (nested) checkpoint."""

    def __init__(self) -> None:
        self._copies: dict[_Key, _Entry] = {}
        self._spare: dict[_Key, torch.Tensor] = {}  # copies no snapshot uses any more, by their source's key

    def take(self, value: Any, generation: Any = None) -> Any:
        """``value`` with every tensor replaced by its CPU copy (pinned on CUDA); containers are copied too.

        Copies taken with the same ``generation`` (not None) are shared; None shares nothing.
        """
        generation = object() if generation is None else generation
        copied = self._take(value, generation)
        if any(entry.source.is_cuda for entry in self._copies.values()):
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
        return copied

    def bytes_needed(self, value: Any, generation: Any = None) -> int:
        """Bytes that :meth:`take` would copy anew (the tensors with no copy of this generation)."""
        return sum(_nbytes(t) for t in _tensors(value) if self._current(t, generation) is None)

    def has_stale_copy(self, value: Any, generation: Any = None) -> bool:
        """Whether some tensor of ``value`` has a copy of another generation (or taken before it last changed)."""
        return any(_key(t) in self._copies and self._current(t, generation) is None for t in _tensors(value))

    def cached_bytes(self) -> int:
        """Bytes held by the copies in the cache."""
        return sum(_nbytes(entry.copy) for entry in self._copies.values())

    def clear(self, keep_buffers: bool = True) -> None:
        """Forget every copy; with ``keep_buffers`` they are overwritten by the next snapshot, so no snapshot
        taken before may be in use any more."""
        self._spare = {key: entry.copy for key, entry in self._copies.items()} if keep_buffers else {}
        self._copies = {}

    def _take(self, value: Any, generation: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._copy(value, generation)
        if isinstance(value, dict):
            out = copy.copy(value)  # keeps the type and attributes such as a state dict's _metadata
            for key, item in value.items():
                out[key] = self._take(item, generation)
            return out
        if type(value) in (list, tuple):
            return type(value)(self._take(item, generation) for item in value)
        return value  # numbers, strings, None: immutable

    def _copy(self, tensor: torch.Tensor, generation: Any) -> torch.Tensor:
        current = self._current(tensor, generation)
        if current is not None:
            return current
        source = tensor.detach()
        key = _key(source)
        old = self._copies.pop(key, None)
        target = self._spare.pop(key, None) if old is None else None  # a copy of an older generation: its write may
        if target is None:                                              # still be in flight, so never overwrite it
            target = torch.empty_like(source, device="cpu", pin_memory=source.is_cuda)
        target.copy_(source, non_blocking=source.is_cuda)
        self._copies[key] = _Entry(source, source._version, generation, target)
        return target

    def _current(self, tensor: torch.Tensor, generation: Any) -> torch.Tensor | None:
        entry = self._copies.get(_key(tensor))
        if entry is None or generation is None or entry.generation != generation or entry.version != tensor._version:
            return None
        return entry.copy


def _key(tensor: torch.Tensor) -> _Key:
    return (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []
