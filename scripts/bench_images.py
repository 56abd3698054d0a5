#!/usr/bin/env python
"""Benchmark training from a folder of PNGs: ignite_app's decoded cache + augmentation on the device vs the plain loop.

  plain   a Dataset that opens each file with Pillow and augments it per sample (random crop with 4 px
          of padding, horizontal flip, normalise), DataLoader(num_workers=2, shuffle=True), the same CNN,
          Adam, zero_grad / forward / loss / backward / step;
  cache   ignite_app's pipeline for --dataset imagefolder:PATH --augment crop,flip (build_pipeline: the
          decoded uint8 cache, the in-memory loader, crop+flip of whole batches on the training device);
  tensors the same decoded images already in memory as float32 tensors (npz:, no augmentation): the
          in-memory speed that the cache path is measured against.
Training epochs only (no validation), interleaved and repeated, plus each input pipeline alone ("data only":
every augmented batch of an epoch, no model); medians of wall time and of CPU time
(user + sys, DataLoader workers included). The cache build is timed once against one plain epoch.

    python scripts/bench_images.py                         # 5,000 32x32 RGB PNGs, 10 classes, CPU, 1 thread
    python scripts/bench_images.py --images 50000 --device cuda --batch-size 512

--larger-than-memory GB measures something else: it writes GB GiB of uint8 images as npy:DIR (or, with
--format npz, one uncompressed .npz) to a temporary
folder (refused with under 10 GB free on its disk), trains one epoch on them with --memory-budget-mb 512 and
a tiny pooling model (so that the epoch is about reading the data), and reports the training process's peak
RSS against the dataset's size.

    python scripts/bench_images.py --larger-than-memory 4 [--format npz]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_folder(root: Path, images: int, classes: int, size: int) -> None:
    """``images`` random RGB PNGs of ``size`` px, each class a brighter channel mix."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % classes
        pixels = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
        pixels[..., label % 3] = np.minimum(255, pixels[..., label % 3] + 20 * (label // 3 + 1)).astype(np.uint8)
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


def cpu_seconds() -> float:
    """User + sys time of this process and its reaped children (the DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(step: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    step()
    return time.perf_counter() - wall, cpu_seconds() - cpu


class PlainFolder:
    """The usual torch pipeline: decode every PNG again every epoch, augment one sample at a time."""

    def __init__(self, root: Path, batch_size: int, device: str, classes: int) -> None:
        import torch
        from torch.utils.data import DataLoader

        from ignite_app.models.builtin import CNN

        files = sorted(root.glob("*/*.png"))
        self.dataset = PngDataset(files, sorted({f.parent.name for f in files}))
        self.loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=True, num_workers=2,
                                 generator=torch.Generator().manual_seed(0), persistent_workers=False)
        self.device = torch.device(device)
        self.model = CNN(3, classes).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = torch.nn.CrossEntropyLoss()

    def epoch(self) -> None:
        self.model.train()
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            self.loss(self.model(x), y).backward()
            self.optimizer.step()


class PngDataset:
    """Open, decode, pad-crop, flip and normalise one image per call (what DataLoader workers usually do)."""

    def __init__(self, files: list[Path], classes: list[str]) -> None:
        self.files, self.index = files, {name: i for i, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as img:
            x = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        top, left = np.random.randint(0, 9, size=2)
        x = x[:, top : top + 32, left : left + 32]
        if np.random.rand() < 0.5:
            x = x.flip(-1)
        x = (x.float() / 255 - 0.5) / 0.25
        return x, self.index[self.files[i].parent.name]


class CachedFolder:
    """ignite_app's pipeline on the folder, as ``train`` builds it (without validation)."""

    def __init__(self, root: Path | str, batch_size: int, device: str, augment: str = "crop,flip") -> None:
        import torch

        from ignite_app.config import Config
        from ignite_app.train.build import build_pipeline

        dataset = str(root) if str(root).startswith("npz:") else f"imagefolder:{root}"
        cfg = Config(dataset=dataset, augment=augment, batch_size=batch_size, device=device,
                     epochs=10_000, patience=0, progress=False)
        self.pipe = build_pipeline(cfg, torch.device(device))
        self.epochs = 0

    def epoch(self) -> None:
        self.epochs += 1  # Ignite continues a finished run when asked for more epochs
        self.pipe.trainer.run(self.pipe.train_loader, max_epochs=self.epochs, epoch_length=self.pipe.epoch_length)


def as_npz(cached: CachedFolder, work: Path) -> Path:
    """The decoded images as float32 in [0, 1] with their labels: the same data as tensors in memory (npz:)."""
    import numpy as np

    from ignite_app.data.image_cache import load_or_build
    from ignite_app.data.images import scan_folder

    cache = load_or_build(scan_folder(Path(cached.pipe.cfg.dataset.split(":", 1)[1])), None, None, False)
    path = work / "tensors.npz"
    np.savez(path, x=np.asarray(cache.array(), dtype=np.float32) / 255.0, y=cache.labels)
    return path


def drain(loader) -> None:
    """Every batch of one epoch, augmented, and nothing else: the input pipeline's own cost."""
    for x, _ in loader:
        x.sum()  # touch the batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="Timed epochs per variant (after one warm-up).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the training process.")
    parser.add_argument("--larger-than-memory", type=float, metavar="GB",
                        help="Only train 1 epoch on GB GiB of uint8 images streamed from disk; report peak RSS.")
    parser.add_argument("--format", choices=("npy", "npz"), default="npy",
                        help="With --larger-than-memory: the images as npy:DIR or as one uncompressed npz: file.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_images_"))
    try:
        if args.larger_than_memory:
            larger_than_memory(args.larger_than_memory, work, args.format)
        else:
            run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


POOL_MODEL = """
from torch import nn


class Pool(nn.Module):
    \"\"\"Cheap enough that an epoch over gigabytes of pixels is about reading them.\"\"\"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)
"""

SIDE = 256  # 1 x 256 x 256 uint8 images: 64 KiB each, 16,384 per GiB
MIN_FREE_BYTES = 10 * 10**9


def write_big_data(folder: Path, samples: int, fmt: str) -> str:
    """``samples`` grayscale images as npy:DIR or one uncompressed npz (written in chunks); the --dataset value."""
    import zipfile

    import numpy as np

    folder.mkdir()
    y = (np.arange(samples) % 2).astype(np.int64)
    if fmt == "npy":
        with open(folder / "x.npy", "wb") as f:
            write_images(f, y)
        np.save(folder / "y.npy", y)
        return f"npy:{folder}"
    with zipfile.ZipFile(folder / "big.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as archive:  # as numpy.savez
        with archive.open("x.npy", "w", force_zip64=True) as f:
            write_images(f, y)
        with archive.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, y)
    return f"npz:{folder / 'big.npz'}"


def write_images(f: object, y: "np.ndarray") -> None:
    """A .npy of one image per label, in chunks; class 1 is 100 levels brighter than class 0."""
    import numpy as np

    chunk = 1024
    noise = np.random.default_rng(0).integers(0, 100, (chunk, 1, SIDE, SIDE), dtype=np.uint8)
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (len(y), 1, SIDE, SIDE)})
    for start in range(0, len(y), chunk):
        rows = y[start : start + chunk]
        f.write((noise[: len(rows)] + (rows[:, None, None, None] * 100).astype(np.uint8)).tobytes())


def larger_than_memory(gib: float, work: Path, fmt: str) -> None:
    """Train 1 epoch on ``gib`` GiB of uint8 images (npy:DIR or npz:) with a 512 MiB memory budget; print the peak RSS."""
    import resource
    import subprocess

    free = shutil.disk_usage(work).free
    if free < MIN_FREE_BYTES:
        sys.exit(f"Error: {work} has {free / 1e9:.1f} GB free; --larger-than-memory needs at least 10 GB")
    samples = int(gib * 2**30) // (SIDE * SIDE)
    wall = time.perf_counter()
    dataset = write_big_data(work / "big", samples, fmt)
    size = samples * SIDE * SIDE
    print(f"# wrote {samples:,} x 1 x {SIDE} x {SIDE} uint8 = {size / 2**30:.2f} GiB as {dataset.split(':')[0]} "
          f"in {time.perf_counter() - wall:.0f} s")
    (work / "poolmod.py").write_text(POOL_MODEL)
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--dataset", dataset, "--model",
               "poolmod:Pool", "--memory-budget-mb", "512", "--epochs", "1", "--batch-size", "256", "--no-progress",
               "--device", "cpu", "--output-dir", str(work / "run")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wall, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(done.stderr.strip() + "\n" + done.stdout.strip())
    if done.returncode != 0:
        sys.exit(f"training failed with exit code {done.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(f"# peak RSS of the training process: {peak / 2**20:.0f} MiB for {size / 2**20:,.0f} MiB of data "
          f"({peak / size:.2f}x); training run {wall:.0f} s wall, {cpu:.0f} s CPU (user+sys); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)")


def run(args: argparse.Namespace, work: Path) -> None:
    root = work / "pngs"
    write_folder(root, args.images, args.classes, 32)
    plain = PlainFolder(root, args.batch_size, args.device, args.classes)
    built: list[CachedFolder] = []
    build_wall, build_cpu = timed(lambda: built.append(CachedFolder(root, args.batch_size, args.device)))
    cached = built[0]
    train_samples = len(cached.pipe.splits.train)
    tensors = CachedFolder(f"npz:{as_npz(cached, work)}", args.batch_size, args.device, augment="off")
    plain.epoch(), cached.epoch(), tensors.epoch()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "cache": [], "tensors": [], "plain data only": [],
                                                   "cache data only": []}
    first_plain = timed(plain.epoch)
    times["plain"].append(first_plain)
    for i in range(args.epochs):
        times["cache"].append(timed(cached.epoch))
        times["tensors"].append(timed(tensors.epoch))
        if i + 1 < args.epochs:
            times["plain"].append(timed(plain.epoch))
        times["plain data only"].append(timed(lambda: drain(plain.loader)))
        times["cache data only"].append(timed(lambda: drain(cached.pipe.train_loader)))
    samples = {"plain": args.images, "cache": train_samples, "tensors": len(tensors.pipe.splits.train), "plain data only": args.images, "cache data only": train_samples}
    print(f"# {args.images} 32x32 RGB PNGs, {args.classes} classes, default CNN, batch {args.batch_size}, "
          f"crop+flip, device {args.device}, {args.threads} torch thread(s); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (shared with other jobs)")
    print("| variant | samples/s (median) | epoch wall s (median) | epoch CPU s (median) | epochs |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        print(f"| {name} | {samples[name] / wall:,.0f} | {wall:.2f} | {cpu:.2f} | {len(runs)} |")
    speedup = (samples["cache"] / statistics.median(w for w, _ in times["cache"])) / (
        samples["plain"] / statistics.median(w for w, _ in times["plain"]))
    print(f"cache vs plain, samples/s: {speedup:.2f}x")
    rate = {name: samples[name] / statistics.median(w for w, _ in runs) for name, runs in times.items()}
    print(f"cache (uint8 + augmentation) vs tensors in memory, samples/s: {rate['cache'] / rate['tensors']:.2f}x")
    print(f"cache build (decode {args.images} PNGs, pipeline build included): {build_wall:.2f} s wall, {build_cpu:.2f} s CPU"
          f" = {build_wall / statistics.median(w for w, _ in times['plain']):.2f}x one plain epoch (wall)")


if __name__ == "__main__":
    main()
