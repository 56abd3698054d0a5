#!/usr/bin/env python
"""The plain PyTorch loop that ignite_app is measured against: what a user writes by hand.

``DataLoader(TensorDataset, shuffle=True)``, ``.to(device)``, zero_grad / forward / loss /
backward / step, then a ``no_grad`` validation pass in eval mode. Nothing else: no logging,
no checkpoints but the final weights. ``scripts/bench.py`` imports its functions for the
in-process comparison and runs it whole (``--whole-run``) against ``scripts/train.py``:

    python scripts/plain_loop.py --epochs 20 --model cnn      # digits, like scripts/train.py
    python scripts/plain_loop.py --epochs 20 --fused          # the same with Adam(fused=True), like ignite_app
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_loaders(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches and in-order validation batches, one sample at a time as usual."""
    return (DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(*val), batch_size=batch_size))


def make_optimizer(model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """Adam at lr 1e-3: torch's default implementation, or its fused kernel as ignite_app uses."""
    return torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, loader: DataLoader,
                device: torch.device) -> None:
    """One pass over the training batches."""
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()


def validate(model: nn.Module, loss_fn: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over the validation batches (summed on the device, read once)."""
    model.eval()
    total = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            total += loss_fn(out, y) * len(y)
            correct += (out.argmax(1) == y).sum()
            count += len(y)
    return total.item() / count, correct.item() / count


def load_digits_split(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's digits as (N, 1, 8, 8) in [0, 1], split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(x) * 0.2)
    return (x[perm[n_val:]], y[perm[n_val:]]), (x[perm[:n_val]], y[perm[:n_val]])


def main() -> None:
    """Train on digits for ``--epochs`` epochs and print one line per epoch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=("mlp", "cnn"), default="cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="where to save the final weights")
    parser.add_argument("--fused", action="store_true", help="Adam(fused=True), as ignite_app uses, instead of torch's default")
    args = parser.parse_args()

    from ignite_app.models import CNN, MLP  # the same architectures that scripts/train.py builds

    device = torch.device(args.device)
    train, val = load_digits_split()
    torch.manual_seed(0)
    model = (CNN(1, 10) if args.model == "cnn" else MLP(64, 10)).to(device)
    optimizer = make_optimizer(model, args.fused)
    loss_fn = nn.CrossEntropyLoss()
    train_loader, val_loader = make_loaders(train, val, args.batch_size)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_epoch(model, optimizer, loss_fn, train_loader, device)
        val_loss, val_acc = validate(model, loss_fn, val_loader, device)
        print(f"epoch {epoch:>3}/{args.epochs}  val_loss {val_loss:.4f}  val_accuracy {val_acc:.4f}  "
              f"{time.perf_counter() - start:.1f}s")
    if args.output:
        torch.save(model.state_dict(), args.output)


if __name__ == "__main__":
    main()
