"""An IterableDataset run stopped by SIGTERM mid-epoch: a stateful stream resumes exactly; a plain one says it restarts."""

from __future__ import annotations

import re

import torch

from conftest import assert_same_tree, run_train, signalling_model
from ignite_app.io import checkpoint as ckpt
from unit.test_streams import STREAMS

SIGNAL_MLP = signalling_model("SignalMLP", "nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))")


def test_sigterm_mid_epoch_then_resume_of_a_stateful_stream_is_exact(tmp_path):
    (tmp_path / "streams.py").write_text(STREAMS)
    (tmp_path / "sigmodels.py").write_text(SIGNAL_MLP)
    args = ["--dataset", "streams:stateful", "--steps-per-epoch", "4", "--batch-size", "8", "--epochs", "4",
            "--model", "sigmodels:SignalMLP", "--patience", "0", "--no-progress"]  # 32 items an epoch, 100 a pass
    ref = run_train(*args, "--output-dir", str(tmp_path / "ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    first = run_train(*args, "--output-dir", str(tmp_path / "run"), cwd=tmp_path, SIGNAL_AT="10:TERM")
    assert first.returncode == 143, first.stderr
    assert re.search(r"stopped by SIGTERM at iteration 10 \(epoch 3\)", first.stdout), first.stdout
    saved = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_10.pt", require_checksum=True)
    assert saved["data_stream"] == {"pos": 80}
    done = run_train("--resume", str(tmp_path / "run"), "--trust-config", "--no-progress", cwd=tmp_path)  # the run names our test module
    assert done.returncode == 0, done.stderr
    got = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_16.pt", require_checksum=True)
    want = ckpt.read_checkpoint(tmp_path / "ref" / "checkpoints" / "checkpoint_16.pt", require_checksum=True)
    got.pop("checkpointer"), want.pop("checkpointer")
    assert_same_tree(got, want, "checkpoint")
    assert want["data_stream"] == {"pos": 24}  # a pass of 100 is 12 batches of 8 and one of 4; then 3 batches


def test_a_stream_without_state_says_it_restarts(tmp_path):
    (tmp_path / "streams.py").write_text(STREAMS)
    (tmp_path / "sigmodels.py").write_text(SIGNAL_MLP)
    args = ["--dataset", "streams:plain", "--steps-per-epoch", "4", "--batch-size", "8", "--epochs", "3",
            "--model", "sigmodels:SignalMLP", "--patience", "0", "--no-progress", "--output-dir", str(tmp_path / "run")]
    first = run_train(*args, cwd=tmp_path, SIGNAL_AT="6:TERM")
    assert first.returncode == 143, first.stderr
    assert "data_stream" not in ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_6.pt")
    done = run_train("--resume", str(tmp_path / "run"), "--trust-config", "--no-progress", cwd=tmp_path)  # the run names our test module
    assert done.returncode == 0, done.stderr
    assert "streams:plain has no state_dict()/load_state_dict(): the data stream restarts from its beginning" in done.stdout
    assert torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_12.pt", weights_only=True)["trainer"]["iteration"] == 12
