#!/usr/bin/env python
"""The plain inference script that ``ignite-app predict`` and ``evaluate`` are measured against.

It loads a run's best model with ``torch.load(weights_only=True)``, runs ``no_grad`` batches of
4096 over an NPZ file (array x, and y to evaluate) and writes CSV predictions with ``numpy.savetxt``
or prints the mean cross-entropy and accuracy. Nothing else: no checks, no config, no Ignite.

    python scripts/plain_inference.py predict RUN_DIR data.npz out.csv
    python scripts/plain_inference.py evaluate RUN_DIR data.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BATCH = 4096


def load_model(run_dir: Path) -> torch.nn.Module:
    """The MLP of a digits run (ignite_app's own class) with its best weights, in eval mode."""
    from ignite_app.models import MLP

    [path] = sorted((run_dir / "checkpoints").glob("best_model_*.pt"))
    model = MLP(64, 10)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs for ``x`` in no_grad batches."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def main() -> None:
    """Predict or evaluate, as the first argument says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("predict", "evaluate"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("output", nargs="?", type=Path)
    parser.add_argument("--rows", type=int, help="evaluate: only the first N rows")
    args = parser.parse_args()
    model = load_model(args.run_dir)
    with np.load(args.data) as arrays:
        x = torch.as_tensor(arrays["x"][: args.rows], dtype=torch.float32)
        y = torch.as_tensor(arrays["y"][: args.rows]) if args.command == "evaluate" else None
    out = outputs(model, x)
    if y is None:
        probs = torch.softmax(out, dim=1).numpy()
        header = ",".join(["label"] + [f"prob_{k}" for k in range(probs.shape[1])])
        np.savetxt(args.output, np.column_stack([probs.argmax(1), probs]), fmt=["%d"] + ["%.6g"] * probs.shape[1],
                   delimiter=",", header=header, comments="")
        print(f"wrote {len(x)} predictions to {args.output}")
    else:
        loss = torch.nn.functional.cross_entropy(out, y).item()
        print(json.dumps({"loss": loss, "accuracy": (out.argmax(1) == y).float().mean().item()}))


if __name__ == "__main__":
    main()
