#!/usr/bin/env python
"""The plain PyTorch loop that ignite_app is measured against: what a user writes by hand.

``DataLoader(TensorDataset, shuffle=True)``, ``.to(device)``, zero_grad / forward / loss /
backward / step, then a ``no_grad`` validation pass in eval mode. Nothing else: no logging,
no checkpoints but the final weights. ``scripts/bench.py`` imports its functions for the
in-process comparison and runs it whole (``--whole-run``) against ``scripts/train.py``:

    python scripts/plain_loop.py --epochs 20 --model cnn      # digits, like scripts/train.py
    python scripts/plain_loop.py --epochs 20 --fused          # the same with Adam(fused=True), like ignite_app
    torchrun --standalone --nproc_per_node=2 scripts/plain_loop.py --fused   # plain DDP (gloo on the CPU)

Under torchrun it is the plain DDP loop: ``DistributedSampler`` for both splits, the model in
``DistributedDataParallel``, the validation sums all-reduced, rank 0 printing; nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: plain DDP
        train_loader, val_loader, net = ddp_setup(model, train, val, args.batch_size, device)
    else:
        (train_loader, val_loader), net = make_loaders(train, val, args.batch_size), model
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        if distributed:
            train_loader.sampler.set_epoch(epoch)
        train_epoch(net, optimizer, loss_fn, train_loader, device)
        val_loss, val_acc = validate(net, loss_fn, val_loader, device) if not distributed else ddp_validate(net, loss_fn, val_loader, device)
        if not distributed or torch.distributed.get_rank() == 0:
            print(f"epoch {epoch:>3}/{args.epochs}  val_loss {val_loss:.4f}  val_accuracy {val_acc:.4f}  "
                  f"{time.perf_counter() - start:.3f}s")
    if args.output and (not distributed or torch.distributed.get_rank() == 0):
        torch.save(model.state_dict(), args.output)
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # Freeing the DDP model at exit frees gloo's process group, whose destructor joins its worker thread while
        # holding the GIL; that thread needs the GIL to free its last work's tensors: a deadlock (seen with py-spy in
        # about 1 run of 5 here, torch 2.13). Leave without running destructors, the output already written.
        sys.stdout.flush()
        os._exit(0)


def ddp_setup(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
              batch_size: int, device: torch.device) -> tuple[DataLoader, DataLoader, nn.Module]:
    """The process group (gloo on the CPU, NCCL on CUDA), sharded loaders and the DDP-wrapped model."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    train_set, val_set = TensorDataset(*train), TensorDataset(*val)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=DistributedSampler(train_set, shuffle=True, seed=0))
    val_loader = DataLoader(val_set, batch_size=batch_size, sampler=DistributedSampler(val_set, shuffle=False))
    return train_loader, val_loader, DistributedDataParallel(model)


def ddp_validate(model: nn.Module, loss_fn: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """The validation pass on this rank's shard, its sums all-reduced (DistributedSampler pads with a few repeats)."""
    model.eval()
    sums = torch.zeros(3, device=device)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            sums += torch.stack([loss_fn(out, y) * len(y), (out.argmax(1) == y).sum().float(), torch.tensor(float(len(y)), device=device)])
    torch.distributed.all_reduce(sums)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


if __name__ == "__main__":
    main()
