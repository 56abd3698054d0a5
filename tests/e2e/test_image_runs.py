"""imagefolder end to end: a SIGTERM mid-epoch with augmentation on, then --resume, ends exactly like an uninterrupted run."""

from __future__ import annotations

import re

import pytest

from conftest import assert_same_tree, run_train, signalling_model
from ignite_app.io import checkpoint as ckpt
from unit.test_images import make_folder

SIGNAL_MODEL = signalling_model(
    "SignalCNN", "nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 3))")


@pytest.mark.parametrize("augment", ["crop,flip", "resized-crop,flip"])
def test_sigterm_mid_epoch_then_resume_with_augmentation_is_exact(tmp_path, augment):
    data = make_folder(tmp_path / "images", per_class=8)  # 23 readable images: 18 train, 5 val
    (tmp_path / "imgmodels.py").write_text(SIGNAL_MODEL)
    args = ["--dataset", f"imagefolder:{data}", "--image-size", "8", "--augment", augment, "--model", "imgmodels:SignalCNN",
            "--batch-size", "4", "--epochs", "3", "--patience", "0", "--no-progress"]  # 5 iterations per epoch
    ref = run_train(*args, "--output-dir", str(tmp_path / "ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    first = run_train(*args, "--output-dir", str(tmp_path / "run"), cwd=tmp_path, SIGNAL_AT="8:TERM")
    assert first.returncode == 143, first.stderr
    assert re.search(r"stopped by SIGTERM at iteration 8 \(epoch 2\)", first.stdout), first.stdout
    done = run_train("--resume", str(tmp_path / "run"), "--trust-config", "--no-progress", cwd=tmp_path)  # the run names our test module
    assert done.returncode == 0, done.stderr
    got = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_15.pt", require_checksum=True)
    want = ckpt.read_checkpoint(tmp_path / "ref" / "checkpoints" / "checkpoint_15.pt", require_checksum=True)
    got.pop("checkpointer"), want.pop("checkpointer")
    assert_same_tree(got, want, "checkpoint")
    assert "pixel_mean" in got["model"]


POOL_MODEL = '''
from torch import nn

class Pool(nn.Module):
    """Cheap enough that an epoch over a gigabyte of pixels takes seconds: the test is about memory."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)
'''

# Runs train.py as its only child and prints the child's peak RSS: RUSAGE_CHILDREN of pytest would include other tests' runs.
PEAK_RSS = '''
import resource, subprocess, sys
code = subprocess.run([sys.executable] + sys.argv[1:]).returncode
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
'''


def test_a_memory_mapped_dataset_larger_than_the_rss_bound_trains_under_it(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from conftest import TRAIN_SCRIPT, cli_env

    n, side = 65_536, 128  # 65,536 grayscale 128x128 images: 1 GiB of uint8
    data = tmp_path / "big"
    data.mkdir()
    x = np.lib.format.open_memmap(data / "x.npy", mode="w+", dtype=np.uint8, shape=(n, 1, side, side))
    y = (np.arange(n) % 2).astype(np.int64)
    noise = np.random.default_rng(0).integers(0, 100, (2048, 1, side, side), dtype=np.uint8)
    for start in range(0, n, 2048):
        x[start : start + 2048] = noise + (y[start : start + 2048, None, None, None] * 100).astype(np.uint8)
    x.flush()
    del x
    np.save(data / "y.npy", y)
    size_kb = (data / "x.npy").stat().st_size // 1024
    (tmp_path / "poolmod.py").write_text(POOL_MODEL)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(TRAIN_SCRIPT), "--dataset", f"npy:{data}", "--model", "poolmod:Pool",
         "--memory-budget-mb", "256", "--epochs", "1", "--batch-size", "256", "--no-progress", "--device", "cpu",
         "--output-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "streaming it batch by batch" in run.stderr
    assert "val_accuracy 1.0000" in run.stdout, run.stdout
    peak_kb = int(run.stdout.split("PEAK_RSS_KB")[1])
    assert peak_kb < 0.75 * size_kb, f"peak RSS {peak_kb} KiB for {size_kb} KiB of data"
