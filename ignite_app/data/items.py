"""User datasets whose items are dicts (what Hugging Face ``datasets`` return): pick the input and target by key."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.utils.data import Dataset

from ignite_app.errors import UserError

INPUT_KEYS = ("x", "input", "inputs", "image", "pixel_values", "features")
TARGET_KEYS = ("y", "label", "labels", "target", "targets")


class DictItems(Dataset):
    """``(item[input_key], item[target_key])`` as tensors for each dict item of ``data``."""

    def __init__(self, data: Any, input_key: str, target_key: str) -> None:
        self.data, self.input_key, self.target_key = data, input_key, target_key
        if hasattr(data, "num_classes"):
            self.num_classes = data.num_classes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.data[index]
        return torch.as_tensor(item[self.input_key]), torch.as_tensor(item[self.target_key])


def pair_items(data: Any, input_key: str | None, target_key: str | None, name: str) -> Any:
    """``data`` itself when its items are pairs; a :class:`DictItems` view when they are dicts."""
    try:
        first = data[0]
    except Exception:
        return data  # empty, unsized or failing: the caller reports it
    if not isinstance(first, Mapping):
        if input_key or target_key:
            raise UserError(f"--dataset {name}: --input-key and --target-key apply to dict items, but items are "
                            f"{type(first).__name__}; drop them")
        return data
    keys = list(first)
    chosen = [choose_key(keys, given, defaults, flag, name) for given, defaults, flag in
              ((input_key, INPUT_KEYS, "--input-key"), (target_key, TARGET_KEYS, "--target-key"))]
    return DictItems(data, chosen[0], chosen[1])


def choose_key(keys: list[Any], given: str | None, defaults: tuple[str, ...], flag: str, name: str) -> str:
    """``given`` if it is one of ``keys``, else (when not given) the first of ``defaults`` there; else one Error line."""
    if given is not None and given in keys:
        return given
    if given is None:
        for key in defaults:
            if key in keys:
                return key
    asked = f"{flag} {given!r} is not" if given is not None else f"no {flag} given and none of {', '.join(defaults)} is"
    raise UserError(f"--dataset {name}: items are dicts and {asked} among their keys ({', '.join(map(str, keys))}); "
                    f"pass {flag} KEY")
