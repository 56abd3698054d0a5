"""``--init-weights FILE``: start from another run's weights (fine-tuning), as far as they fit.

FILE is a safetensors file (``ignite-app export``) or one of this tool's checkpoints, read through
:func:`ignite_app.io.checkpoint.read_checkpoint` (checksums, ``weights_only``): neither runs code.
Tensors whose name and shape match are copied; the rest is reported, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ignite_app.errors import UserError

SHOWN = 4  # names listed per kind in the report


@dataclass
class InitReport:
    """What ``--init-weights`` did: tensors loaded, skipped for a different shape, missing from the file."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        parts = [f"init weights from {self.path}: loaded {len(self.loaded)} tensors"]
        for what, names in (("skipped (shape differs)", self.skipped), ("missing from the file", self.missing)):
            if names:
                more = f", +{len(names) - SHOWN} more" if len(names) > SHOWN else ""
                parts.append(f"{what} {len(names)}: {', '.join(names[:SHOWN])}{more}")
        return "; ".join(parts)


def read_weights(path: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of a safetensors file, or the weights a checkpoint's model is used with (EMA if it has one)."""
    if not path.is_file():
        raise UserError(f"--init-weights {path}: no such file; pass a .safetensors file or a checkpoint_*.pt/best_model_*.pt")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"--init-weights {path}: not a readable safetensors file ({exc})") from None
    from ignite_app.io.checkpoint import read_checkpoint
    from ignite_app.train.ema import inference_weights

    weights = inference_weights(read_checkpoint(path))
    if not isinstance(weights, Mapping):
        raise UserError(f"--init-weights {path}: holds no model weights")
    return weights


def load_matching(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> InitReport:
    """Copy every tensor of ``weights`` whose name and shape match ``model``'s; report the others."""
    report = InitReport(path)
    own = model.state_dict()
    with torch.no_grad():
        for name, target in own.items():
            source = weights.get(name)
            if not isinstance(source, torch.Tensor):
                report.missing.append(name)
            elif source.shape != target.shape:
                report.skipped.append(name)
            else:
                target.copy_(source.to(dtype=target.dtype, device=target.device))
                report.loaded.append(name)
    if not report.loaded:
        raise UserError(f"--init-weights {path}: no tensor fits this model (names or shapes differ everywhere); "
                        "use weights of the same architecture")
    return report


def bare_weights(weights: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The wrapped model's own tensors when ``weights`` come from an image run (pixel normalisation in front)."""
    from ignite_app.models.normalize import MEAN_KEY, STD_KEY

    if MEAN_KEY not in weights or STD_KEY not in weights:
        return weights
    return {name.removeprefix("model."): t for name, t in weights.items() if name not in (MEAN_KEY, STD_KEY)}


def init_weights(model: nn.Module, path: str) -> InitReport:
    """Load ``path`` into the bare ``model`` (before any pixel normalisation wraps it) where it fits; returns the report."""
    return load_matching(model, bare_weights(read_weights(Path(path))), Path(path))
