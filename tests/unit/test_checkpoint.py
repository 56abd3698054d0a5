"""The one place that writes and reads checkpoints: AtomicSaver and read_checkpoint, in-process."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from conftest import ExecPayload, ShellPayload, flip_tensor_byte, save_as_if_on_cuda, write_sidecar
from faults import full_disk_from, slow_writes
from ignite_app.io import checkpoint as ckpt
from ignite_app.data.checks import all_finite
from ignite_app.train.state import GradState, RNGState
from ignite_app.errors import DiskFullError, NonFiniteLossError
from ignite_app.io.atomic import atomic_write, sha256_file


def tiny_state(value: float = 1.0) -> dict:
    """A small checkpoint-shaped dict."""
    return {"model": {"weight": torch.full((4, 3), value), "bias": torch.zeros(4)}, "trainer": {"iteration": 7}}


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- AtomicSaver -------------------------------------------------------------------------------


def test_saver_writes_file_and_matching_sidecar(tmp_path):
    saver = ckpt.AtomicSaver(tmp_path)
    saver(tiny_state(), "checkpoint_7.pt")
    path = tmp_path / "checkpoint_7.pt"
    digest, name = (tmp_path / "checkpoint_7.pt.sha256").read_text().split()
    assert (digest, name) == (sha256_file(path), "checkpoint_7.pt")
    assert torch.equal(torch.load(path, weights_only=True)["model"]["weight"], torch.ones(4, 3))
    assert leftovers(tmp_path) == []


def test_saver_removes_evicted_file_only_after_the_new_save(tmp_path):
    saver = ckpt.AtomicSaver(tmp_path)
    saver(tiny_state(), "checkpoint_1.pt")
    saver.remove("checkpoint_1.pt")  # Ignite asks for this *before* writing the next one
    assert (tmp_path / "checkpoint_1.pt").is_file() and (tmp_path / "checkpoint_1.pt.sha256").is_file()
    saver(tiny_state(2.0), "checkpoint_2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2.pt", "checkpoint_2.pt.sha256"]


def test_saver_keeps_a_file_that_is_saved_again_under_the_same_name(tmp_path):
    saver = ckpt.AtomicSaver(tmp_path)
    saver(tiny_state(1.0), "best_model_5.pt")
    saver.remove("best_model_5.pt")
    saver(tiny_state(3.0), "best_model_5.pt")
    state = ckpt.read_checkpoint(tmp_path / "best_model_5.pt", require_checksum=True)
    assert torch.equal(state["model"]["weight"], torch.full((4, 3), 3.0))


def test_failed_save_keeps_the_previous_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    saver = ckpt.AtomicSaver(tmp_path)
    saver(tiny_state(), "checkpoint_1.pt")
    saver.remove("checkpoint_1.pt")
    saver.wrap_file = full_disk_from(2)
    with pytest.raises(DiskFullError, match="no space left on device while writing .*checkpoint_2.pt"):
        saver(tiny_state(2.0), "checkpoint_2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1.pt", "checkpoint_1.pt.sha256"]
    assert ckpt.read_checkpoint(tmp_path / "checkpoint_1.pt", require_checksum=True)["trainer"]["iteration"] == 7


def test_ignite_checkpoint_with_n_saved_1_never_loses_its_only_file(tmp_path, monkeypatch):
    engine = Engine(lambda e, b: None)
    saver = ckpt.AtomicSaver(tmp_path, wrap_file=full_disk_from(2))
    handler = ckpt.make_train_checkpoint({"model": nn.Linear(2, 1), "trainer": engine}, saver, n_saved=1)
    engine.state.iteration = 10
    handler(engine)
    engine.state.iteration = 20
    with pytest.raises(DiskFullError):
        handler(engine)
    assert ckpt.read_checkpoint(tmp_path / "checkpoint_10.pt", require_checksum=True)["model"]["weight"].shape == (1, 2)
    assert not (tmp_path / "checkpoint_20.pt").exists() and leftovers(tmp_path) == []


def test_disk_full_is_recognised_behind_torch_runtime_error(tmp_path):
    def write(f):
        try:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        except OSError:  # what torch.save does: its zip writer fails again in __exit__
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(DiskFullError, match="no space left"):
        atomic_write(tmp_path / "x.pt", write)
    assert list(tmp_path.iterdir()) == []


def test_saver_refuses_non_finite_weights(tmp_path):
    state = tiny_state()
    state["model"]["bias"][2] = float("nan")
    with pytest.raises(NonFiniteLossError, match="model.bias"):
        ckpt.AtomicSaver(tmp_path)(state, "checkpoint_3.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("values, finite", [
    ([1.0, 2.0, 3.0], True),
    ([1.0, float("nan"), 3.0], False),
    ([1.0, float("inf"), 3.0], False),
    ([float("inf"), float("-inf"), 0.0], False),  # the sum is NaN
    ([3e38, 3e38, -3e38], True),  # finite elements whose sum overflows: checked element by element
    ([6e4, 6e4], True),  # the same in fp16 (max 65504), below
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_agrees_with_the_element_by_element_check(values, finite, dtype):
    tensor = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert all_finite(tensor) is bool(torch.isfinite(tensor).all())
    if dtype in (torch.float32, torch.float64) or max(abs(v) for v in values) < 6.5e4:
        assert all_finite(tensor) is finite


def test_slow_save_fault_leaves_a_temporary_file_then_a_whole_checkpoint(tmp_path, monkeypatch):
    ckpt.AtomicSaver(tmp_path, wrap_file=slow_writes(0.05))(tiny_state(), "checkpoint_1.pt")
    assert ckpt.read_checkpoint(tmp_path / "checkpoint_1.pt", require_checksum=True)["trainer"]["iteration"] == 7


def test_clean_temporaries_removes_only_temporary_files(tmp_path):
    folder = tmp_path / ckpt.CHECKPOINT_DIR
    folder.mkdir()
    (folder / ".checkpoint_9.pt.abc123.tmp").write_bytes(b"half")
    (folder / "checkpoint_8.pt").write_bytes(b"kept")
    assert [p.name for p in ckpt.clean_temporaries(tmp_path)] == [".checkpoint_9.pt.abc123.tmp"]
    assert [p.name for p in folder.iterdir()] == ["checkpoint_8.pt"]


def test_remove_evicted_deletes_only_older_files_outside_the_kept_set(tmp_path):
    folder = tmp_path / ckpt.CHECKPOINT_DIR
    saver = ckpt.AtomicSaver(folder)
    for name in ("checkpoint_10.pt", "checkpoint_20.pt", "checkpoint_30.pt", "best_model_10.pt", "best_model_40.pt"):
        saver(tiny_state(), name)
    removed = ckpt.remove_evicted(tmp_path, kept={"checkpoint_20.pt", "checkpoint_30.pt"}, upto=30)
    assert [p.name for p in removed] == ["best_model_10.pt", "checkpoint_10.pt"]
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best_model_40.pt", "checkpoint_20.pt", "checkpoint_30.pt"]
    assert not (folder / "checkpoint_10.pt.sha256").exists()


# --- read_checkpoint: hostile and broken files ---------------------------------------------------


@pytest.fixture
def marker(tmp_path):
    """A file that only a payload would create; the test fails if it ever appears."""
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a pickle payload was executed"


def _zip_payload(path: Path, payload: object) -> None:
    torch.save({"model": {"weight": torch.ones(2)}, "trainer": payload}, path)


def _legacy_payload(path: Path, payload: object) -> None:
    torch.save({"model": payload}, path, _use_new_zipfile_serialization=False)


def _raw_pickle_payload(path: Path, payload: object) -> None:
    path.write_bytes(pickle.dumps(payload))


@pytest.mark.parametrize("payload_type", [ShellPayload, ExecPayload], ids=["os.system", "builtins.exec"])
@pytest.mark.parametrize("writer", [_zip_payload, _legacy_payload, _raw_pickle_payload], ids=["zip", "legacy", "raw-pickle"])
@pytest.mark.parametrize("sidecar", [True, False], ids=["with-sidecar", "no-sidecar"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, marker, payload_type, writer, sidecar):
    path = tmp_path / "checkpoint_1.pt"
    writer(path, payload_type(marker))
    if sidecar:
        write_sidecar(path)  # a matching checksum must not make a hostile file loadable
    expected = "refused: it holds objects other than tensors" if writer is _zip_payload else "not a PyTorch zip checkpoint"
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint_1\.pt: {expected}"):
        ckpt.read_checkpoint(path)


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """Proof that the payload test above is meaningful: an unrestricted load runs it."""
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    _zip_payload(path, ShellPayload(marker))
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid checkpoint with a matching sidecar, written by our saver."""
    ckpt.AtomicSaver(tmp_path)({"model": {"weight": torch.arange(4096, dtype=torch.float32)}, "trainer": {"iteration": 3}},
                               "checkpoint_3.pt")
    return tmp_path / "checkpoint_3.pt"


def test_truncated_file_is_refused(good):
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (good.parent / "checkpoint_3.pt.sha256").unlink()
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.read_checkpoint(good)


def test_truncated_file_with_its_old_sidecar_is_refused(good):
    good.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="SHA-256 does not match"):
        ckpt.read_checkpoint(good)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "checkpoint_1.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="the file is empty"):
        ckpt.read_checkpoint(tmp_path / "checkpoint_1.pt")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "checkpoint_1.pt"
    path.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy().tobytes())
    with pytest.raises(ckpt.CheckpointError, match="not a PyTorch zip checkpoint"):
        ckpt.read_checkpoint(path)


def test_flipped_tensor_byte_is_caught_by_the_sidecar(good):
    flip_tensor_byte(good)
    with pytest.raises(ckpt.CheckpointError, match="SHA-256 does not match checkpoint_3.pt.sha256"):
        ckpt.read_checkpoint(good)


def test_flipped_tensor_byte_is_caught_by_the_zip_crc_without_sidecar(good):
    flip_tensor_byte(good)
    (good.parent / "checkpoint_3.pt.sha256").unlink()
    with pytest.raises(ckpt.CheckpointError, match="CRC check failed for .*data/0"):
        ckpt.read_checkpoint(good)


def test_missing_sidecar_is_refused_when_required(good):
    (good.parent / "checkpoint_3.pt.sha256").unlink()
    assert ckpt.read_checkpoint(good)["trainer"]["iteration"] == 3
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint_3.pt.sha256"):
        ckpt.read_checkpoint(good, require_checksum=True)


def test_a_tensor_instead_of_a_dict_is_refused(tmp_path):
    torch.save(torch.ones(3), tmp_path / "checkpoint_1.pt")
    with pytest.raises(ckpt.CheckpointError, match="expected a dict, found Tensor"):
        ckpt.read_checkpoint(tmp_path / "checkpoint_1.pt")


def test_checkpoint_saved_on_cuda_loads_on_this_cpu_machine(tmp_path):
    path = tmp_path / "checkpoint_5.pt"
    model = nn.Linear(3, 2)
    save_as_if_on_cuda({"model": model.state_dict(), "rng": {"cuda": [torch.zeros(16, dtype=torch.uint8)]}}, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # without map_location it really needs a GPU
    state = ckpt.read_checkpoint(path)
    assert state["model"]["weight"].device.type == "cpu"
    assert torch.equal(state["model"]["weight"], model.weight.detach())


# --- state objects round-trip through weights_only -----------------------------------------------


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    rng = RNGState()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    ckpt.AtomicSaver(tmp_path)({"rng": rng.state_dict()}, "r.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    rng.load_state_dict(ckpt.read_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


def test_grad_state_restores_accumulated_gradients(tmp_path):
    model = nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    saved = GradState(model).state_dict()
    fresh = nn.Linear(3, 2)
    GradState(fresh).load_state_dict(saved)
    assert torch.equal(fresh.weight.grad, model.weight.grad) and torch.equal(fresh.bias.grad, model.bias.grad)


def test_model_and_optimizer_checks_name_the_mismatch(tmp_path):
    path = tmp_path / "c.pt"
    model = nn.Sequential(nn.Linear(3, 2))
    other = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ckpt.CheckpointError, match=r"parameter 0.weight has shape \(4, 3\) in the checkpoint"):
        ckpt.check_model_state(model, other.state_dict(), path)
    with pytest.raises(ckpt.CheckpointError, match="another model architecture"):
        ckpt.check_model_state(model, nn.Sequential(nn.Identity(), nn.Linear(3, 2)).state_dict(), path)
    adam = torch.optim.Adam(model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ckpt.CheckpointError, match="another optimizer"):
        ckpt.check_optimizer_state(adam, sgd.state_dict(), path)
    with pytest.raises(ckpt.CheckpointError, match="parameter groups"):
        ckpt.check_optimizer_state(adam, {"param_groups": "junk"}, path)
