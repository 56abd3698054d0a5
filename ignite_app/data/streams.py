"""A user's ``IterableDataset``: (input, target) pairs from a stream, epochs of ``--steps-per-epoch`` batches.

Resuming mid-epoch restores the stream's position when the dataset has ``state_dict()`` and
``load_state_dict()`` (as torchdata's stateful datasets do): the state goes into the checkpoint, and
the next ``iter()`` continues from there. Without them the stream starts again from its beginning.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import IterableDataset

from ignite_app.data.items import INPUT_KEYS, TARGET_KEYS, choose_key
from ignite_app.errors import UserError


class Stream(IterableDataset):
    """The items of ``data`` as ``(input, target)`` tensors; dict items by key."""

    def __init__(self, data: Any, input_key: str | None, target_key: str | None, name: str) -> None:
        self.data, self.name = data, name
        self.first = peek(data, name)
        self.keys: tuple[Any, Any] | None = None
        if isinstance(self.first, Mapping):
            keys = list(self.first)
            self.keys = (choose_key(keys, input_key, INPUT_KEYS, "--input-key", name),
                         choose_key(keys, target_key, TARGET_KEYS, "--target-key", name))
        elif input_key or target_key:
            raise UserError(f"--dataset {name}: --input-key and --target-key apply to dict items; drop them")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for item in self.data:
            yield self.pair(item)

    def pair(self, item: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One item as ``(input, target)`` tensors."""
        if self.keys is not None:
            return torch.as_tensor(item[self.keys[0]]), torch.as_tensor(item[self.keys[1]])
        try:
            x, y = item
        except (TypeError, ValueError):
            raise UserError(f"--dataset {self.name}: items must be (input, target) pairs or dicts") from None
        return torch.as_tensor(x), torch.as_tensor(y)

    @property
    def stateful(self) -> bool:
        """Whether the stream can say where it is and be put back there."""
        return callable(getattr(self.data, "state_dict", None)) and callable(getattr(self.data, "load_state_dict", None))

    def state_dict(self) -> Any:
        """The user's dataset's position (checkpointed as it is: it must be plain tensors and numbers)."""
        return self.data.state_dict()

    def load_state_dict(self, state: Any) -> None:
        """Put the user's dataset back where a checkpoint left it."""
        self.data.load_state_dict(state)


def peek(data: Any, name: str) -> Any:
    """The first item of the stream, without moving a stateful stream."""
    saved = data.state_dict() if callable(getattr(data, "state_dict", None)) else None
    try:
        item = next(iter(data))
    except StopIteration:
        raise UserError(f"--dataset {name} returned an empty IterableDataset") from None
    if saved is not None and callable(getattr(data, "load_state_dict", None)):
        data.load_state_dict(saved)
    return item


def nominal_size(data: Any, steps_per_epoch: int | None, batch_size: int, train: bool) -> int:
    """``len(data)``; for a training :class:`Stream`, the samples of one epoch (``--steps-per-epoch`` batches)."""
    if not isinstance(data, Stream):
        if train and steps_per_epoch is not None:
            raise UserError("--steps-per-epoch applies to IterableDataset sources, whose length is unknown; drop it")
        return len(data)
    if not train:
        return 0  # validation reads the stream to its end
    if steps_per_epoch is None:
        raise UserError(f"--dataset {data.name} is an IterableDataset: give the epoch length with --steps-per-epoch N")
    return steps_per_epoch * batch_size


def size_text(data: Any) -> str:
    """How many samples, for the line that announces a run."""
    return "streamed" if isinstance(data, Stream) else str(len(data))
