#!/usr/bin/env python
"""Benchmark ignite_app's real training pipeline against the plain PyTorch loop.

Default mode, in one process, interleaved and repeated (after warm-up epochs):
  plain   the plain loop of scripts/plain_loop.py: DataLoader(TensorDataset, shuffle=True), .to(device),
          zero_grad / forward / loss / backward / step, then a no_grad validation pass in eval mode;
          torch's default (per-tensor) Adam, as a user writes it by hand;
  fused   the same loop with Adam(fused=True), the optimizer kernel ignite_app uses: like for like;
  floor   the eager floor: batches sliced once before timing, then only forward / loss / backward /
          fused Adam step and the validation pass (no loader, no shuffling, no handlers);
  loader  ignite_app's pipeline as `train` builds it (validation metrics, TensorBoard, a checkpoint per
          epoch, early stopping, the progress bar, loss tracking) on the DataLoader path (--no-in-memory);
  memory  the same pipeline on the in-memory path (the default for tensor data).
Same model, data, batch size, optimizer (Adam, lr 1e-3) and device. Every variant's epoch time is
divided by each baseline's (plain, fused, floor) of the same round. Peak memory and the time from launch to the first
iteration come from one fresh process per variant. --amp, --channels-last, --compile and --cuda-graph apply to the
pipeline only: the plain loop stays plain.

--whole-run times whole processes instead, start-up included: `python scripts/train.py` on digits
against `python scripts/plain_loop.py` (default Adam) and `python scripts/plain_loop.py --fused` for the same
number of epochs, in rotating order, several times.

    python scripts/bench.py                                   # MLP on digits x10, CPU, 1 thread
    python scripts/bench.py --whole-run                       # start-up included, default CNN on digits
    python scripts/bench.py --inference                       # whole predict/evaluate processes on 100k rows
    python scripts/bench.py --validation --epochs 30          # one validation pass: evaluator against raw no_grad
    python scripts/bench.py --logging-cost --epochs 100       # the in-memory path with and without its step logging
    python scripts/bench.py --overhead --epochs 40            # the in-memory path against the floor, part by part
    python scripts/bench.py --distributed --whole-epochs 10   # 1 process against torchrun's 2 on the CPU, and plain DDP
    python scripts/bench.py --big-checkpoint --repeat 1 --epochs 3 --reps 2   # 17M parameters: checkpoint stall, RSS
    python scripts/bench.py --device cuda --model cnn --amp bf16 --channels-last
    python scripts/bench.py --device cuda --model resnet --data cifar --batch-size 512 --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": "plain loop (DataLoader)",
    "fused": "plain loop, fused Adam",
    "floor": "eager floor",
    "loader": "ignite_app, DataLoader path",
    "memory": "ignite_app, in-memory path",
}
BASELINES = ("plain", "fused", "floor")  # what every variant is divided by
MODELS = {"mlp": "mlp", "cnn": "cnn", "resnet": "ignite_app.models:ResNet", "big": "bench_models:BigMLP"}
SEED = 0


@dataclass(frozen=True)
class Workload:
    """What every variant trains on, and how."""

    data_file: Path
    model: str
    batch_size: int
    device: str
    amp: str
    channels_last: bool
    compile: bool
    compile_mode: str
    cuda_graph: bool
    epochs: int  # warm-up + measured: the pipeline's max_epochs


# ---------------------------------------------------------------- data


def write_data(kind: str, repeat: int, samples: int, folder: Path) -> Path:
    """The benchmark data as an .npz file (arrays x, y), read by every variant through ignite_app.data."""
    import numpy as np

    if kind == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.tile((bunch.images / 16.0).astype(np.float32)[:, None], (repeat, 1, 1, 1))
        y = np.tile(bunch.target.astype(np.int64), repeat)
    else:  # CIFAR-shaped: a fixed random pattern per class under noise, so accuracy means something
        rng = np.random.default_rng(SEED)
        patterns = rng.standard_normal((10, 3, 32, 32), dtype=np.float32)
        y = rng.integers(0, 10, samples)
        x = 0.5 * patterns[y] + rng.standard_normal((samples, 3, 32, 32), dtype=np.float32)
    path = folder / f"{kind}.npz"
    np.savez(path, x=x, y=y)
    return path


def load_data(work: Workload) -> Any:
    """The train/validation split exactly as ``ignite_app train --dataset npz:...`` makes it."""
    from ignite_app.config import Config
    from ignite_app.data.sources import load_splits

    return load_splits(Config(dataset=f"npz:{work.data_file}"))


# ---------------------------------------------------------------- variants


class Plain:
    """The plain loop of scripts/plain_loop.py on the benchmark data."""

    def __init__(self, work: Workload, device: Any, fused: bool = False) -> None:
        import torch
        from plain_loop import make_loaders, make_optimizer

        from ignite_app.models import build_model

        splits = load_data(work)
        torch.manual_seed(SEED)  # the same initial weights as the pipeline's model
        self.model = build_model(MODELS[work.model], splits.spec).to(device)
        self.optimizer = make_optimizer(self.model, fused)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.train_loader, self.val_loader = make_loaders(
            (splits.train.x, splits.train.y), (splits.val.x, splits.val.y), work.batch_size)
        self.device = device
        self.samples = len(splits.train)

    def epoch(self) -> None:
        """One training epoch and one validation pass."""
        from plain_loop import train_epoch, validate

        train_epoch(self.model, self.optimizer, self.loss_fn, self.train_loader, self.device)
        validate(self.model, self.loss_fn, self.val_loader, self.device)

    def on_first_iteration(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the first training batch arrives."""
        self.train_loader = _FirstBatch(self.train_loader, callback)

    def close(self) -> None:
        """Nothing to close."""


class Floor:
    """The eager floor: what any loop must do, and nothing else.

    The batches are sliced once, before timing, in one shuffled order; an epoch is forward / loss /
    backward / fused Adam step per batch, then the validation pass of the plain loop.
    """

    def __init__(self, work: Workload, device: Any) -> None:
        import torch
        from plain_loop import make_optimizer

        from ignite_app.models import build_model

        splits = load_data(work)
        torch.manual_seed(SEED)
        self.model = build_model(MODELS[work.model], splits.spec).to(device)
        self.optimizer = make_optimizer(self.model, fused=True)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(SEED))
        self.train_batches: Any = sliced(splits.train.x[order], splits.train.y[order], work.batch_size, device)
        self.val_batches = sliced(splits.val.x, splits.val.y, work.batch_size, device)
        self.device = device
        self.samples = len(splits.train)

    def epoch(self) -> None:
        """One training epoch and one validation pass."""
        from plain_loop import validate

        self.train_steps()
        validate(self.model, self.loss_fn, self.val_batches, self.device)

    def train_steps(self) -> None:
        """forward / loss / backward / fused Adam step over every pre-sliced training batch."""
        self.model.train()
        for x, y in self.train_batches:
            self.optimizer.zero_grad()
            self.loss_fn(self.model(x), y).backward()
            self.optimizer.step()

    def on_first_iteration(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the first training batch is taken."""
        self.train_batches = _FirstBatch(self.train_batches, callback)

    def close(self) -> None:
        """Nothing to close."""


def sliced(x: Any, y: Any, batch_size: int, device: Any) -> list[tuple[Any, Any]]:
    """``(x, y)`` on ``device`` as a list of contiguous batches."""
    x, y = x.to(device).contiguous(), y.to(device).contiguous()
    return list(zip(x.split(batch_size), y.split(batch_size)))


class _FirstBatch:
    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self.loader, self.callback = loader, callback

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.callback is not None:
                self.callback()
                self.callback = None
            yield batch


class Pipeline:
    """ignite_app's training run, built and opened exactly as ``train`` does, driven one epoch at a time."""

    def __init__(self, work: Workload, device: Any, in_memory: bool, out_dir: Path, **overrides: Any) -> None:
        from ignite.engine import Events

        from ignite_app.config import Config
        from ignite_app.train.build import build_run
        from ignite_app.train.handlers import StopSignal
        from ignite_app.train.loop import open_run

        self.null = open(os.devnull, "w")
        cfg = Config(
            dataset=f"npz:{work.data_file}", model=MODELS[work.model], batch_size=work.batch_size, epochs=work.epochs,
            seed=SEED, device=work.device, amp=work.amp, channels_last=work.channels_last, compile=work.compile, compile_mode=work.compile_mode,
            cuda_graph=work.cuda_graph or None,  # None: ignite_app's default (graphs on one CUDA process)
            in_memory=in_memory, output_dir=str(out_dir), progress=True,
            patience=work.epochs + 1,  # on and checked every epoch, but never ends the measurement early
        ).replace(**overrides)
        echo = lambda line: print(line, file=self.null)  # noqa: E731  # the epoch lines, printed as usual
        with redirect_stderr(self.null):
            self.run = build_run(cfg, device, echo)
            open_run(self.run, StopSignal(), echo, None)
        # Last at EPOCH_COMPLETED (after validation and the checkpoint): hand control back to the bench.
        self.run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: engine.interrupt())
        self.samples = len(self.run.train_sampler)

    def epoch(self) -> None:
        """Continue the run for one more epoch (the progress bar draws into /dev/null)."""
        with redirect_stderr(self.null):
            self.run.trainer.run(self.run.train_loader, max_epochs=self.run.cfg.epochs, epoch_length=self.run.epoch_length)

    def on_first_iteration(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the trainer's first ITERATION_STARTED."""
        from ignite.engine import Events

        self.run.trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda _: callback())

    def close(self) -> None:
        """End the run (its COMPLETED handlers run once all epochs are done) and close its writers."""
        from ignite_app.train.loop import close_run

        if self.run.trainer.state.epoch >= self.run.cfg.epochs:
            self.epoch()  # resumes after the last interrupt: fires COMPLETED and ends the run
        close_run(self.run)
        self.null.close()


def build_variant(name: str, work: Workload, device: Any, out_dir: Path) -> Plain | Floor | Pipeline:
    """One of VARIANTS, ready to run epochs."""
    if name in ("plain", "fused"):
        return Plain(work, device, fused=name == "fused")
    if name == "floor":
        return Floor(work, device)
    from ignite_app.fastimport import import_ignite

    import_ignite()  # as the ignite-app command does, before anything imports ignite
    return Pipeline(work, device, in_memory=name == "memory", out_dir=out_dir / name)


# ---------------------------------------------------------------- timing


def timed(step: Callable[[], None], device: Any) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process) of ``step()``, GPU work finished before and after."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Timings:
    """Seconds per epoch of each variant: the first (warm-up) epoch, then the measured ones."""

    first: dict[str, float]
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleave(variants: dict[str, Plain | Floor | Pipeline], warmup: int, epochs: int, device: Any) -> Timings:
    """Run every variant's epochs in rounds; the order rotates every round so no variant always goes first."""
    names = list(variants)
    out = Timings(first={}, wall={name: [] for name in names}, cpu={name: [] for name in names})
    for round_ in range(warmup + epochs):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            wall, cpu = timed(variants[name].epoch, device)
            if round_ == 0:
                out.first[name] = wall
            if round_ >= warmup:
                out.wall[name].append(wall)
                out.cpu[name].append(cpu)
    return out


def probe(name: str, work: Workload, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory and launch-to-first-iteration of one variant, in a fresh process of its own."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", name, "--data-file", str(work.data_file),
           *_workload_flags(args), "--launched-at", repr(time.time())]
    done = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"probe {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_probe(args: argparse.Namespace) -> None:
    """``--probe NAME``: build one variant, run two epochs, print its peaks as one JSON line."""
    import torch

    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = workload(args, Path(args.data_file), epochs=2)
    first: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        variant = build_variant(args.probe, work, device, Path(tmp))
        variant.on_first_iteration(lambda: first.append(time.time()))
        for _ in range(2):
            variant.epoch()
        variant.close()
    result = {"first_iteration_s": first[0] - args.launched_at, "peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(result))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    Linux's VmHWM belongs to this program's own address space; ru_maxrss would also count the
    parent that forked it (the benchmark, with every variant loaded) up to the exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------- report


def spread(values: list[float], digits: int = 3) -> str:
    """``median (min-max)`` of ``values``."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def paired_ratios(times: dict[str, list[float]], name: str, base: str = "plain") -> list[float]:
    """Per-round ratios of ``name``'s time to ``base``'s (a round shares the machine's load)."""
    if base not in times:
        return [float("nan")]
    return [t / b for t, b in zip(times[name], times[base])]


def report(args: argparse.Namespace, samples: int, timings: Timings, probes: dict[str, dict[str, float]]) -> None:
    """Print the results: one table of times and memory, one of ratios to every baseline."""
    mem_key = "peak_cuda_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    print(f"\n{describe_machine(args)}")
    print(f"workload: {args.model} on {describe_data(args)}, {samples} train samples, batch {args.batch_size}, "
          f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile} ({args.compile_mode}), "
          f"cuda_graph {args.cuda_graph} (pipeline only); "
          f"{args.warmup} warm-up + {args.epochs} measured epochs per variant, interleaved\n")
    header = ["variant", "s/epoch", "samples/s", "CPU s/epoch",
              "peak CUDA MiB" if mem_key == "peak_cuda_mib" else "peak RSS MiB", "mem x plain",
              "launch to 1st iter s", "first epoch s"]
    plain_mem = probes.get("plain", {}).get(mem_key)
    rows = []
    for name, wall in timings.wall.items():
        mem = probes.get(name, {}).get(mem_key)
        rows.append([
            VARIANTS[name], spread(wall), f"{samples / statistics.median(wall):,.0f}", spread(timings.cpu[name]),
            _fmt(mem, "{:.0f}"), _fmt(mem / plain_mem if mem and plain_mem else None, "{:.3f}"),
            _fmt(probes.get(name, {}).get("first_iteration_s"), "{:.2f}"), f"{timings.first[name]:.3f}",
        ])
    print_table(header, rows)
    print()
    print_table(*ratio_table(timings))
    intervals = interval_table(timings)
    if intervals[1]:
        print()
        print_table(*intervals)
    print("\nmedian (min-max) over the measured epochs. x plain / x fused / x floor: per-round ratio of epoch times "
          "to the plain loop with torch's default Adam, the plain loop with Adam(fused=True) (ignite_app's optimizer: "
          "like for like) and the eager floor (pre-sliced batches, step and validation only); below 1 is faster. "
          "CPU: process CPU time (all threads), less sensitive to other load. Memory and launch to first iteration: "
          "one fresh process per variant. first epoch: the first warm-up epoch, which includes torch.compile with --compile. "
          "95% interval: of the median per-round CPU-time ratio, by resampling the rounds (bootstrap, 2000 draws): "
          "how far the median can be trusted on this machine.")


def ratio_table(timings: Timings) -> tuple[list[str], list[list[str]]]:
    """Header and rows: every variant's wall and CPU time over each baseline that ran."""
    bases = [b for b in BASELINES if b in timings.wall]
    header = ["variant"] + [f"time x {b}" for b in bases] + [f"CPU x {b}" for b in bases]
    rows = [[VARIANTS[name]] + [spread(paired_ratios(timings.wall, name, b)) for b in bases]
            + [spread(paired_ratios(timings.cpu, name, b)) for b in bases] for name in timings.wall]
    return header, rows


def interval_table(timings: Timings) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each ignite_app variant's median CPU-time ratio to the fused loop and to the floor, with the
    95% bootstrap interval of that median (per-round ratios vary by tens of percent on a shared VM)."""
    bases = [b for b in ("fused", "floor") if b in timings.cpu]
    header = ["ignite_app variant"] + [f"CPU x {b}: median [95% interval]" for b in bases]
    rows = [[VARIANTS[name]] + [interval(paired_ratios(timings.cpu, name, b)) for b in bases]
            for name in timings.cpu if name in ("loader", "memory")]
    return header, (rows if bases else [])


def interval(values: list[float], draws: int = 2000, seed: int = 0) -> str:
    """``median [low-high]``: the 2.5th and 97.5th percentiles of the median of ``values`` resampled with replacement."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return f"{statistics.median(values):.3f} [{medians[int(0.025 * draws)]:.3f}-{medians[int(0.975 * draws) - 1]:.3f}]"


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, columns padded to line up in a terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def describe_machine(args: argparse.Namespace) -> str:
    """CPU or GPU, torch version, threads and date, for the README table."""
    import torch

    if args.device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(args.device))
    else:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores ({usable} usable)"
    return (f"machine: {where}; torch {torch.__version__}; threads {args.threads}; "
            f"python {platform.python_version()}; {date.today().isoformat()}")


def describe_data(args: argparse.Namespace) -> str:
    """The data, in words."""
    if args.data == "digits":
        return f"digits x{args.repeat}"
    return f"CIFAR-shaped synthetic data ({args.samples} samples)"


# ---------------------------------------------------------------- whole runs


WHOLE_COMMANDS = {"ignite_app": "python scripts/train.py", "plain": "python scripts/plain_loop.py",
                  "fused": "python scripts/plain_loop.py --fused"}


def whole_run(args: argparse.Namespace) -> None:
    """Time `scripts/train.py` and `scripts/plain_loop.py` (default and fused Adam) as whole processes, start-up included."""
    env = thread_env(args.threads)
    names = list(WHOLE_COMMANDS)  # ignite_app first in the first round: it tells the plain loops how many epochs
    results: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    epochs_done = None
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
        for rep in range(args.reps):
            for kind in names[rep % len(names):] + names[: rep % len(names)]:
                seconds, usage, out = run_process(whole_command(kind, args, epochs_done, Path(tmp) / f"{kind}{rep}"), env)
                results[kind].append(seconds)
                cpu[kind].append(usage.ru_utime + usage.ru_stime)
                peaks[kind].append(usage.ru_maxrss / 1024)
                if kind == "ignite_app":
                    epochs_done = epochs_trained(out)
    print(f"\n{describe_machine(args)}")
    print(f"whole runs: {args.model} on digits, batch {args.batch_size}, {epochs_done} epochs each, "
          f"{args.reps} repetitions in rotating order, start-up included\n")
    rows = [[WHOLE_COMMANDS[kind], spread(results[kind], 2), spread(paired_ratios(results, kind)),
             spread(paired_ratios(results, kind, "fused")), spread(cpu[kind], 2), spread(paired_ratios(cpu, kind)),
             spread(paired_ratios(cpu, kind, "fused")), f"{statistics.median(peaks[kind]):.0f}"]
            for kind in ("plain", "fused", "ignite_app")]
    print_table(["command", "wall s", "time x plain", "time x fused", "CPU s", "CPU x plain", "CPU x fused",
                 "peak RSS MiB"], rows)
    print("\nmedian (min-max) over the repetitions; x plain / x fused: per-repetition ratio to the plain script's run "
          "with torch's default Adam / with Adam(fused=True). CPU: user + system time of the whole process.")


def whole_command(kind: str, args: argparse.Namespace, epochs: int | None, out: Path) -> list[str]:
    """The command line of one whole run."""
    if kind == "ignite_app":
        return [sys.executable, str(REPO / "scripts" / "train.py"), "--device", args.device, "--model", args.model,
                "--epochs", str(args.whole_epochs), "--batch-size", str(args.batch_size), "--output-dir", str(out)]
    return [sys.executable, str(REPO / "scripts" / "plain_loop.py"), "--device", args.device, "--model", args.model,
            "--epochs", str(epochs), "--batch-size", str(args.batch_size), "--output", f"{out}.pt",
            *(["--fused"] if kind == "fused" else [])]


# ---------------------------------------------------------------- processes and threads on the CPU


DISTRIBUTED = {  # name: (label, launcher processes, torch threads per process, batch per process)
    "plain 1x1": ("plain loop, fused Adam: 1 process x 1 thread", 1, 1, 64),
    "plain 1x2": ("plain loop, fused Adam: 1 process x 2 threads", 1, 2, 64),
    "plain 2x1": ("plain DDP, fused Adam: torchrun 2 processes x 1 thread, batch 32 each", 2, 1, 32),
    "app 1x1": ("ignite_app: 1 process x 1 thread", 1, 1, 64),
    "app 1x2": ("ignite_app: 1 process x 2 threads", 1, 2, 64),
    "app 2x1": ("ignite_app: torchrun 2 processes x 1 thread, batch 32 each", 2, 1, 32),
}


def distributed_run(args: argparse.Namespace) -> None:
    """``--distributed``: one process against torchrun's two on the CPU, whole runs at the same global batch (64).

    Each command runs ``--whole-epochs`` epochs and 1 epoch; the difference, divided by the extra epochs, is
    the time of an epoch with start-up (and torchrun's rendezvous) taken out.
    """
    names = list(DISTRIBUTED)
    wall: dict[str, dict[int, list[float]]] = {name: {1: [], args.whole_epochs: []} for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                for epochs in (args.whole_epochs, 1):
                    cmd = distributed_command(name, args.model, epochs, Path(tmp) / f"{name.replace(' ', '-')}-{rep}-{epochs}")
                    seconds, _, _ = run_process(cmd, thread_env(DISTRIBUTED[name][2]))
                    wall[name][epochs].append(seconds)
    extra = args.whole_epochs - 1
    per_epoch = {name: [(a - b) / extra for a, b in zip(wall[name][args.whole_epochs], wall[name][1])] for name in names}
    print(f"\n{describe_machine(args)}")
    print(f"{args.model} on digits, global batch 64, {args.whole_epochs} and 1 epochs per command, {args.reps} repetitions "
          f"in rotating order\n")
    rows = []
    for name in names:
        base = "plain 1x1" if name.startswith("plain") else "app 1x1"
        ratios = [b / a for a, b in zip(per_epoch[name], per_epoch[base])]  # epochs per second against one process
        rows.append([DISTRIBUTED[name][0], spread(per_epoch[name]), spread(ratios),
                     spread([a / b for a, b in zip(per_epoch[name], per_epoch["plain 1x1"])]),
                     spread(wall[name][args.whole_epochs], 2), spread(wall[name][1], 2)])
    print_table(["command", "s/epoch", "speed x 1 process (same code)", "time x plain 1x1",
                 f"wall s, {args.whole_epochs} epochs", "wall s, 1 epoch"], rows)
    print(f"\nmedian (min-max). s/epoch: (wall of {args.whole_epochs} epochs - wall of 1 epoch) / {extra}: start-up taken "
          "out. speed x 1 process: epochs per second against the same code in 1 process x 1 thread (above 1 is faster).")


def distributed_command(name: str, model: str, epochs: int, out: Path) -> list[str]:
    """One command line of ``--distributed``."""
    _, processes, threads, batch = DISTRIBUTED[name]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                          f"--nproc_per_node={processes}"]
    if name.startswith("plain"):
        return [*launcher, str(REPO / "scripts" / "plain_loop.py"), "--fused", "--model", model, "--epochs", str(epochs),
                "--batch-size", str(batch), "--output", f"{out}.pt"]
    return [*launcher, str(REPO / "scripts" / "train.py"), "--device", "cpu", "--model", model, "--epochs", str(epochs),
            "--batch-size", str(batch), "--threads", str(threads), "--patience", "0", "--no-progress", "--output-dir", str(out)]


# ---------------------------------------------------------------- validation alone


def validation_run(args: argparse.Namespace) -> None:
    """``--validation``: one validation pass through ignite_app's evaluator against the raw no_grad pass, interleaved."""
    import torch
    from plain_loop import validate

    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    passes: dict[str, Callable[[], None]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        work = workload(args, write_data(args.data, args.repeat, args.samples, Path(tmp)), epochs=1)
        floor, pipe = Floor(work, device), build_variant("memory", work, device, Path(tmp))
        passes["raw no_grad pass"] = lambda: validate(floor.model, floor.loss_fn, floor.val_batches, device)
        passes["ignite_app evaluator"] = lambda: pipe.run.evaluator.run(pipe.run.val_loader)
        wall: dict[str, list[float]] = {name: [] for name in passes}
        cpu: dict[str, list[float]] = {name: [] for name in passes}
        for round_ in range(args.warmup + args.epochs):
            for name in (list(passes) if round_ % 2 == 0 else list(passes)[::-1]):
                w, c = timed(passes[name], device)
                if round_ >= args.warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
        samples, batch = len(floor.val_batches), pipe.run.val_loader.batch_size
        pipe.close()
    print(f"\n{describe_machine(args)}")
    print(f"validation of {args.model} on {describe_data(args)}: the raw pass in {samples} batches of {args.batch_size}; "
          f"ignite_app's evaluator (create_supervised_evaluator, Ignite's Loss and Accuracy) at its validation batch "
          f"{batch}; {args.warmup} warm-up + {args.epochs} measured passes each, alternating\n")
    rows = [[name, spread(wall[name], 4), spread(paired_ratios(wall, name, "raw no_grad pass")), spread(cpu[name], 4),
             spread(paired_ratios(cpu, name, "raw no_grad pass"))] for name in passes]
    print_table(["pass", "wall s", "time x raw", "CPU s", "CPU x raw"], rows)


LOGGING_VARIANTS = {
    "floor": "eager floor",
    "memory": "ignite_app, in-memory path, as built",
    "unbuffered": "in-memory path, scalars written at each call",
    "quiet": "in-memory path, --log-every 1000000, no bar",
}


def logging_cost_run(args: argparse.Namespace) -> None:
    """``--logging-cost``: what the per-iteration logging costs the in-memory path, against the eager floor.

    Three builds of the same run, interleaved with the floor in one process: as built; with the
    TensorBoard writer underneath ``ScalarBuffer`` (every ``add_scalar`` written at its call, as before
    issue 16's buffer); and with the training scalars and the progress bar never due (their
    every-N filters still run). ``docs/speed.md`` explains why their costs do not add up.
    """
    import torch

    from ignite_app.fastimport import import_ignite
    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    import_ignite()
    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp:
        work = workload(args, write_data(args.data, args.repeat, args.samples, Path(tmp)), epochs=args.warmup + args.epochs)
        variants: dict[str, Plain | Floor | Pipeline] = {
            "floor": Floor(work, device),
            "memory": Pipeline(work, device, True, Path(tmp) / "memory"),
            "unbuffered": Pipeline(work, device, True, Path(tmp) / "unbuffered"),
            "quiet": Pipeline(work, device, True, Path(tmp) / "quiet", log_every=1_000_000, progress=False),
        }
        unbuffered = variants["unbuffered"].run.tb_logger  # type: ignore[union-attr]
        unbuffered.writer = unbuffered.writer.unbuffered
        timings = interleave(variants, args.warmup, args.epochs, device)
        for variant in variants.values():
            variant.close()
    print(f"\n{describe_machine(args)}")
    print(f"workload: {args.model} on {describe_data(args)}, batch {args.batch_size}, --log-every 10 unless said; "
          f"{args.warmup} warm-up + {args.epochs} measured epochs per variant, interleaved\n")
    rows = [[LOGGING_VARIANTS[name], spread(timings.cpu[name]), spread(paired_ratios(timings.cpu, name, "floor")),
             interval(paired_ratios(timings.cpu, name, "floor"))] for name in variants]
    print_table(["variant", "CPU s/epoch", "CPU x floor", "CPU x floor: median [95% interval]"], rows)


OVERHEAD_PARTS = {
    "floor_steps": "eager floor: training steps",
    "ignite_steps": "Ignite's training step as built, the floor's batches",
    "floor_val": "eager floor: validation pass",
    "ignite_val": "ignite_app: validation (evaluator)",
    "engine": "ignite_app: engine, loader, handlers (trivial step, no validation)",
}


def overhead_run(args: argparse.Namespace) -> None:
    """``--overhead``: where the in-memory path's epoch differs from the eager floor's, part by part.

    Interleaved in one process, CPU time per epoch: the floor's training steps against Ignite's
    ``supervised_training_step`` as ``build_trainer`` makes it, called directly on the same pre-sliced
    batches (no engine); the floor's validation pass against the run's evaluator; and one epoch of a
    built run whose step is replaced by a constant loss, less its validation (Ignite's engine, the
    in-memory loader and every handler: loss tracking, bar, TensorBoard, checkpoint, early stopping).
    The whole floor and the whole in-memory path run in the same rounds, so the sum of the parts can
    be compared with the measured whole (their difference is what the parts do to each other: caches).
    """
    from types import SimpleNamespace

    import torch
    from plain_loop import validate

    from ignite_app.fastimport import import_ignite
    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    import_ignite()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = workload(args, write_data(args.data, args.repeat, args.samples, Path(tmp)), epochs=args.warmup + args.epochs)
        floor, whole = Floor(work, device), Pipeline(work, device, True, Path(tmp) / "whole")
        parts = Pipeline(work, device, True, Path(tmp) / "parts")
        update = parts.run.trainer._process_function
        constant = torch.zeros((), device=device)
        parts.run.trainer._process_function = lambda engine, batch: constant  # Ignite's engine calls it per batch
        val_cpu: list[float] = []
        evaluate = parts.run.evaluator.run

        def timed_evaluate(*a: Any, **k: Any) -> Any:
            start = time.process_time()
            try:
                return evaluate(*a, **k)
            finally:
                val_cpu.append(time.process_time() - start)

        parts.run.evaluator.run = timed_evaluate  # type: ignore[method-assign]
        floor_steps, ignite_steps = step_runners(floor, update)
        runs: dict[str, Callable[[], None]] = {
            "floor_steps": floor_steps, "ignite_steps": ignite_steps,
            "floor_val": lambda: validate(floor.model, floor.loss_fn, floor.val_batches, device),
            "ignite_val": lambda: evaluate(parts.run.val_loader), "engine": parts.epoch,
            "floor": floor.epoch, "memory": whole.epoch,
        }
        timings = interleave({name: SimpleNamespace(epoch=run) for name, run in runs.items()}, args.warmup, args.epochs, device)  # type: ignore[misc]
        for variant in (whole, parts):
            variant.close()
    cpu = timings.cpu  # the engine part without its validation: one timed evaluation per engine epoch, warm-up included
    cpu["engine"] = [seconds - val for seconds, val in zip(cpu["engine"], val_cpu[args.warmup:])]
    report_overhead(args, cpu)


def step_runners(floor: Floor, update: Callable[[Any, Any], Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """One pass of training steps over the floor's pre-sliced batches: the floor's own step, and Ignite's ``update``."""
    from types import SimpleNamespace

    engine = SimpleNamespace(state=SimpleNamespace(iteration=0))  # all that Ignite's step reads of its engine

    def ignite_steps() -> None:
        for batch in floor.train_batches:
            engine.state.iteration += 1
            update(engine, batch)

    return floor.train_steps, ignite_steps


def report_overhead(args: argparse.Namespace, cpu: dict[str, list[float]]) -> None:
    """The table of parts, each as a share of the floor's epoch, and their sum against the measured whole."""
    floor_epoch = statistics.median(cpu["floor"])
    paired = {"ignite_steps": "floor_steps", "ignite_val": "floor_val"}  # compared round by round with the floor's part
    added = {name: statistics.median([a - b for a, b in zip(cpu[name], cpu[base])]) for name, base in paired.items()}
    added["engine"] = statistics.median(cpu["engine"])
    print(f"\n{describe_machine(args)}")
    print(f"workload: {args.model} on {describe_data(args)}, batch {args.batch_size}; {args.warmup} warm-up + "
          f"{args.epochs} measured rounds, every part in every round, rotating order\n")
    rows = []
    for name, label in OVERHEAD_PARTS.items():
        adds = [f"{1000 * added[name]:+.2f}", f"{100 * added[name] / floor_epoch:+.1f}"] if name in added else ["", ""]
        rows.append([label, spread([1000 * v for v in cpu[name]], 2)] + adds)
    whole = paired_ratios(cpu, "memory", "floor")
    rows.append(["sum of the parts", "", f"{1000 * sum(added.values()):+.2f}", f"{100 * sum(added.values()) / floor_epoch:+.1f}"])
    rows.append(["measured: the whole in-memory path against the whole floor", "", "",
                 f"{100 * (statistics.median(whole) - 1):+.1f}"])
    print_table(["part", "CPU ms/epoch", "adds ms/epoch", "adds % of the floor's epoch"], rows)
    print(f"\nmedian (min-max). The floor's epoch: {1000 * floor_epoch:.1f} ms CPU. An ignite_app part adds the median of its "
          "per-round difference from the floor's part above it; the engine part has no counterpart (the floor iterates a "
          f"list). The measured whole: median per-round ratio {interval(whole)} (95% bootstrap interval); what it adds "
          "beyond the sum of the parts is what they do to each other (caches, allocator).")


# ---------------------------------------------------------------- big checkpoints


def big_checkpoint_run(args: argparse.Namespace) -> None:
    """``--big-checkpoint``: the 17M-parameter MLP, each variant in a fresh process: epoch time, checkpoint stall, peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        data_file = write_data("digits", args.repeat, args.samples, Path(tmp))
        results = {}
        for rep in range(args.reps):
            for name in (("fused", "memory") if rep % 2 == 0 else ("memory", "fused")):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-big", name, "--data-file", str(data_file),
                       "--repeat", str(args.repeat), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                       "--threads", str(args.threads)]
                done = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"--probe-big {name} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                for key, value in result.items():
                    results.setdefault(name, {}).setdefault(key, []).extend(value if isinstance(value, list) else [value])
    report_big(args, results)


def report_big(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    """The stall table."""
    print(f"\n{describe_machine(args)}")
    print(f"workload: MLP 64-4096-4096-10 (17.1M parameters) on {describe_data(args)}, batch {args.batch_size}, "
          f"{args.epochs} epochs per process after one warm-up epoch, {args.reps} processes per variant, alternating\n")
    plain_rss = statistics.median(results["fused"]["peak_rss_mib"])
    rows = []
    for name in ("fused", "memory"):
        r = results[name]
        stall, stall_cpu = r.get("stall_s", [0.0]), r.get("stall_cpu_s", [0.0])
        share = [100 * s / e for s, e in zip(stall, r["epoch_s"])] if "stall_s" in r else [0.0]
        cpu_share = [100 * s / e for s, e in zip(stall_cpu, r["cpu_s"])] if "stall_s" in r else [0.0]
        rss = statistics.median(r["peak_rss_mib"])
        rows.append([VARIANTS[name], spread(r["epoch_s"]), spread(r["cpu_s"]), spread(stall), spread(share, 1),
                     spread(stall_cpu), spread(cpu_share, 1), f"{rss:.0f}", f"{rss - plain_rss:.0f}",
                     f"{statistics.median(r['state_mib']):.0f}"])
    print_table(["variant", "s/epoch", "CPU s/epoch", "stall s/epoch", "stall % of epoch", "stall CPU s/epoch",
                 "stall CPU % of CPU", "peak RSS MiB", "RSS - plain MiB", "state MiB"], rows)
    print("\nmedian (min-max) over the measured epochs of every process. stall: wall time the training thread spends in "
          "the checkpoint savers per epoch (best model and training checkpoint: the CPU snapshot, and any wait for writes "
          "in flight or for the GIL); stall CPU: that thread's own CPU time there. state: model + Adam state, one copy. Peak RSS: VmHWM of each fresh process.")


def run_big_probe(args: argparse.Namespace) -> None:
    """``--probe-big NAME``: one warm-up and ``--epochs`` measured epochs of the big model, as one JSON line."""
    import torch

    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    work = Workload(data_file=Path(args.data_file), model="big", batch_size=args.batch_size, device="cpu", amp="off",
                    channels_last=False, compile=False, compile_mode="default", cuda_graph=False, epochs=args.epochs + 1)
    with tempfile.TemporaryDirectory(prefix="bench-big-probe-") as tmp:
        variant = build_variant(args.probe_big, work, device, Path(tmp))
        stalls = time_saves(variant) if isinstance(variant, Pipeline) else None
        epoch_s, cpu_s, stall_s, stall_cpu_s = [], [], [], []
        for epoch in range(args.epochs + 1):
            done = len(stalls) if stalls is not None else 0
            wall, cpu = timed(variant.epoch, device)
            if epoch:
                epoch_s.append(wall)
                cpu_s.append(cpu)
                stall_s.append(sum(w for w, _ in stalls[done:]) if stalls is not None else 0.0)
                stall_cpu_s.append(sum(c for _, c in stalls[done:]) if stalls is not None else 0.0)
        variant.close()
        model = variant.model if isinstance(variant, Plain) else variant.run.raw_model
        state_mib = 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20  # weights, exp_avg, exp_avg_sq
    result: dict[str, Any] = {"epoch_s": epoch_s, "cpu_s": cpu_s, "peak_rss_mib": peak_rss_mib(), "state_mib": state_mib}
    if stalls is not None:
        result.update(stall_s=stall_s, stall_cpu_s=stall_cpu_s)
    print(json.dumps(result))


def time_saves(variant: Pipeline) -> list[tuple[float, float]]:
    """Wrap the run's checkpoint savers to record each save's (wall, training-thread CPU) seconds."""
    seconds: list[tuple[float, float]] = []
    for checkpoint in (variant.run.train_checkpoint, variant.run.best_checkpoint):
        checkpoint.save_handler = _TimedSaver(checkpoint.save_handler, seconds)
    return seconds


class _TimedSaver:
    def __init__(self, inner: Any, seconds: list[float]) -> None:
        self.inner, self.seconds = inner, seconds

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            self.inner(*args, **kwargs)
        finally:
            self.seconds.append((time.perf_counter() - start, time.thread_time() - cpu))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---------------------------------------------------------------- inference commands


def inference_run(args: argparse.Namespace) -> None:
    """Time whole ``ignite-app predict`` / ``evaluate`` processes against scripts/plain_inference.py, rotating."""
    env = thread_env(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = Path(tmp)
        run_process([sys.executable, str(REPO / "scripts" / "train.py"), "--model", "mlp", "--epochs", "1", "--device",
                     "cpu", "--no-progress", "--output-dir", str(folder / "run")], env)
        files = write_inference_data(args.rows, folder)
        commands = inference_commands(folder / "run", files, args.rows, folder)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                seconds, usage, _ = run_process(commands[name], env)
                wall[name].append(seconds)
                cpu[name].append(usage.ru_utime + usage.ru_stime)
                peaks[name].append(usage.ru_maxrss / 1024)
        if not same_predictions(folder / "plain.csv", folder / "app.csv"):
            raise SystemExit("ignite-app predict and the plain script predicted different labels: the comparison is void")
    print(f"\n{describe_machine(args)}")
    print(f"whole processes on {args.rows:,} rows (MLP 64-256-256-10 trained 1 epoch on digits), CPU, "
          f"{args.reps} repetitions in rotating order, start-up included\n")
    rows = []
    for name in names:
        base = name.replace("ignite-app", "plain")
        rows.append([name, spread(wall[name], 2), spread(paired_ratios(wall, name, base)), spread(cpu[name], 2),
                     spread(paired_ratios(cpu, name, base)), f"{statistics.median(peaks[name]):.0f}"])
    print_table(["command", "wall s", "time x plain", "CPU s", "CPU x plain", "peak RSS MiB"], rows)
    print("\nmedian (min-max) over the repetitions; x plain: per-repetition ratio to scripts/plain_inference.py doing the "
          "same (torch.load, no_grad batches of 4096, numpy.savetxt or the mean loss and accuracy). predict: NPZ in, "
          "CSV out; evaluate: the train split of a dataset with 1.25x the rows (the plain script reads the same file).")


def write_inference_data(rows: int, folder: Path) -> dict[str, Path]:
    """Digits tiled to ``rows`` inputs (predict) and to 1.25x ``rows`` labelled samples, whose train split has ``rows``.

    ignite-app gets the pixels as digits has them (0..16) and applies the run's stored preprocessing (x / 16);
    the plain script, which knows no preprocessing, gets them already divided: both feed the model the same values.
    """
    import numpy as np

    from ignite_app.data.sources import load_splits
    from ignite_app.config import Config

    full = load_splits(Config(dataset="digits"))
    x = torch_cat(full.train.x, full.val.x).numpy()
    y = torch_cat(full.train.y, full.val.y).numpy()
    raw = np.rint(x * 16).astype(np.float32)
    take = lambda n: np.resize(np.arange(len(x)), n)  # noqa: E731
    labelled = take(rows * 5 // 4)
    files = {name: folder / f"{name}.npz" for name in ("app-inputs", "app-dataset", "plain-inputs", "plain-dataset")}
    np.savez(files["app-inputs"], x=raw[take(rows)])
    np.savez(files["app-dataset"], x=raw[labelled], y=y[labelled])
    np.savez(files["plain-inputs"], x=raw[take(rows)] / np.float32(16))
    np.savez(files["plain-dataset"], x=raw[labelled] / np.float32(16), y=y[labelled])
    return files


def same_predictions(a: Path, b: Path) -> bool:
    """Whether two prediction CSVs name the same label on every row (their first column)."""
    read = lambda path: [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]  # noqa: E731
    return read(a) == read(b)


def torch_cat(a: Any, b: Any) -> Any:
    """Two tensors, one after the other."""
    import torch

    return torch.cat([a, b])


def inference_commands(run: Path, files: dict[str, Path], rows: int, folder: Path) -> dict[str, list[str]]:
    """The four timed command lines, by name."""
    app = [sys.executable, "-m", "ignite_app.cli"]
    plain = [sys.executable, str(REPO / "scripts" / "plain_inference.py")]
    return {
        "plain predict": [*plain, "predict", str(run), str(files["plain-inputs"]), str(folder / "plain.csv")],
        "ignite-app predict": [*app, "predict", str(run), "--input", str(files["app-inputs"]), "--output",
                               str(folder / "app.csv"), "--overwrite", "--device", "cpu"],
        "plain evaluate": [*plain, "evaluate", str(run), str(files["plain-dataset"]), "--rows", str(rows)],
        "ignite-app evaluate": [*app, "evaluate", str(run), "--dataset", f"npz:{files['app-dataset']}", "--split", "train",
                                "--device", "cpu", "--json"],
    }


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, Any, str]:
    """Wall seconds, resource usage (``os.wait4``'s, of that process alone) and stdout of one command."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return seconds, usage, out.read()


def epochs_trained(output: str) -> int:
    """Epochs a train.py run completed, from its last line ('done: N epoch(s); ...')."""
    for line in reversed(output.splitlines()):
        if line.startswith("done: "):
            return int(line.split()[1])
    raise SystemExit(f"scripts/train.py did not report its epochs:\n{output[-2000:]}")


# ---------------------------------------------------------------- main


def precompile() -> None:
    """Write ignite_app's bytecode (``__pycache__``) before any timed process starts, as a user's first run does.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (it is on the machines these figures come from) every child
    process would otherwise compile ignite_app's modules from source, 0.06-0.1 s that a user's second run
    no longer pays; the plain scripts' imports (torch, numpy) come compiled with their packages.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "ignite_app")], check=True,
                   stdout=subprocess.DEVNULL)


def thread_env(threads: int) -> dict[str, str]:
    """The environment for child processes: the same thread count as the bench."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def workload(args: argparse.Namespace, data_file: Path, epochs: int) -> Workload:
    """The Workload the command-line options describe."""
    return Workload(data_file=data_file, model=args.model, batch_size=args.batch_size, device=args.device, amp=args.amp,
                    channels_last=args.channels_last, compile=args.compile,
                    compile_mode=args.compile_mode, cuda_graph=args.cuda_graph, epochs=epochs)


def _workload_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--model", args.model, "--data", args.data, "--batch-size", str(args.batch_size), "--device", args.device, "--amp", args.amp,
             "--threads", str(args.threads)]
    return flags + (["--channels-last"] if args.channels_last else []) + (["--compile", "--compile-mode", args.compile_mode] if args.compile else []) + (
        ["--cuda-graph"] if args.cuda_graph else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description="Benchmark ignite_app's pipeline against the plain PyTorch loop.")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N [cpu]")
    p.add_argument("--model", choices=sorted(MODELS), help="mlp (64-256-256-10 on digits), cnn, resnet, big (64-4096-4096-10) [mlp; --whole-run: cnn]")
    p.add_argument("--data", choices=("digits", "cifar"), default="digits", help="digits repeated --repeat times, or CIFAR-shaped synthetic data [digits]")
    p.add_argument("--repeat", type=int, default=10, help="digits: how many copies of the 1,797 images [10: 14,376 train samples]")
    p.add_argument("--samples", type=int, default=50_000, help="cifar: number of images [50000]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10, help="measured epochs per variant [10]")
    p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per variant, not measured [1]")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="pipeline only")
    p.add_argument("--channels-last", action="store_true", help="pipeline only")
    p.add_argument("--compile", action="store_true", help="pipeline only; compile time shows in 'first epoch s'")
    p.add_argument("--cuda-graph", action="store_true", help="pipeline only: force CUDA graphs (without it, ignite_app's default: graphs on one CUDA process where they can record)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for --compile, e.g. reduce-overhead [default]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--no-probes", action="store_true", help="skip the per-variant processes (memory, start-up)")
    p.add_argument("--whole-run", action="store_true", help="time scripts/train.py against scripts/plain_loop.py (default and --fused) instead")
    p.add_argument("--whole-epochs", type=int, default=20, help="--whole-run: epochs of each run [20]")
    p.add_argument("--reps", type=int, default=5, help="--whole-run, --inference, --big-checkpoint: repetitions (processes) of each command [5]")
    p.add_argument("--inference", action="store_true", help="time whole `ignite-app predict`/`evaluate` processes against "
                   "scripts/plain_inference.py instead")
    p.add_argument("--rows", type=int, default=100_000, help="--inference: rows to predict and evaluate [100000]")
    p.add_argument("--big-checkpoint", action="store_true", help="the 17M-parameter MLP (--model big): checkpoint stall "
                   "per epoch and peak RSS, ignite_app's in-memory path against the fused plain loop, fresh processes")
    p.add_argument("--distributed", action="store_true", help="one process (1 or 2 threads) against torchrun's 2 "
                   "processes on the CPU, ignite_app and the plain loop (DDP), whole runs at global batch 64")
    p.add_argument("--validation", action="store_true", help="time one validation pass of ignite_app's evaluator against "
                   "the raw no_grad pass instead (--epochs passes each)")
    p.add_argument("--logging-cost", action="store_true", help="the in-memory path as built, with TensorBoard scalars "
                   "written at each call, and with no training scalars or progress bar, against the eager floor")
    p.add_argument("--overhead", action="store_true", help="the in-memory path's epoch against the eager floor's, part "
                   "by part: Ignite's step, validation, and the engine with its handlers around a trivial step")
    p.add_argument("--probe", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--probe-big", choices=("fused", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    p.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or ("cnn" if args.whole_run or args.distributed else "mlp")
    if args.model == "resnet" and args.data != "cifar":
        p.error("--model resnet needs --data cifar (3x32x32 images)")
    if (args.whole_run or args.distributed) and (args.data != "digits" or args.model == "resnet"):
        p.error("--whole-run trains on digits: use --model mlp or cnn")
    variants = args.variants.split(",")
    if not variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants: choose from {','.join(VARIANTS)}")
    for name in ("repeat", "samples", "batch_size", "epochs", "threads", "reps", "whole_epochs", "rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark the options ask for."""
    args = parse_args(argv)
    if args.probe:
        return run_probe(args)
    if args.probe_big:
        return run_big_probe(args)
    precompile()
    if args.big_checkpoint:
        return big_checkpoint_run(args)
    if args.whole_run:
        return whole_run(args)
    if args.inference:
        return inference_run(args)
    if args.distributed:
        return distributed_run(args)
    if args.validation:
        return validation_run(args)
    if args.logging_cost:
        return logging_cost_run(args)
    if args.overhead:
        return overhead_run(args)
    import torch

    from ignite_app.train.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # cuda -> cuda:N, as train() does
    names = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        data_file = write_data(args.data, args.repeat, args.samples, Path(tmp))
        work = workload(args, data_file, epochs=args.warmup + args.epochs)
        variants = {name: build_variant(name, work, device, Path(tmp)) for name in names}
        samples = next(iter(variants.values())).samples
        timings = interleave(variants, args.warmup, args.epochs, device)
        for variant in variants.values():
            variant.close()
        probes = {} if args.no_probes else {name: probe(name, work, args) for name in names}
    report(args, samples, timings, probes)


if __name__ == "__main__":
    from ignite_app.errors import AppError

    try:
        main()
    except AppError as exc:  # e.g. --device cuda on a machine without one: one line, exit 2
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
