"""The one place that writes and reads checkpoints.

Writing: Ignite's :class:`~ignite.handlers.Checkpoint` decides *what* and *when*; :class:`AtomicSaver`
does the disk work: temporary file, fsync, rename, fsync of the folder, a ``.sha256`` sidecar, and
only then the removal of files that fell out of the kept set (Ignite asks to remove them first).

Reading: every load is ``torch.load(weights_only=True, map_location="cpu")`` after the SHA-256 and
the zip CRCs were checked, and the whole checkpoint is checked against the live objects before
any of them is changed.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import torch
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from torch import nn

from ignite_app.data.checks import all_finite
from ignite_app.errors import NonFiniteLossError, UserError, first_line
from ignite_app.io.atomic import atomic_write, atomic_write_bytes, fsync_dir, remove_stale_temporaries, sha256_file
from ignite_app.io.safefile import file_kind, read_bounded

CHECKPOINT_DIR = "checkpoints"
TRAIN_PATTERN = "checkpoint_{global_step}.{ext}"
BEST_PATTERN = "best_model_{global_step}.{ext}"
_TRAIN_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_ANY_NAME = re.compile(r"^(?:checkpoint|best_model)_(\d+)\.pt$")
_BEST_NAME = re.compile(r"^best_model_(\d+)\.pt$")
ROLLED_BACK_DIR = "rolled-back"  # newer checkpoints set aside by a resume from an older one
SIDECAR = ".sha256"
REQUIRED_KEYS = ("model", "optimizer", "trainer")
MAX_BYTES_ENV = "IGNITE_APP_MAX_CHECKPOINT_BYTES"


class AtomicSaver(BaseSaveHandler):
    """Saves what Ignite's Checkpoint hands it, crash-safely, on rank 0 only."""

    def __init__(self, dirname: Path, write: bool = True, wrap_file: Callable[[IO[bytes], int], IO[bytes]] | None = None) -> None:
        self.dirname = Path(dirname)
        self.write = write
        self.wrap_file = wrap_file  # tests wrap the file of the N-th save to inject slow or failing writes
        self._pending_removal: list[str] = []
        self._saves = 0

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not self.write:
            return
        require_finite(checkpoint)
        self._store(filename, lambda f: torch.save(checkpoint, f))

    def write_serialized(self, data: bytes, filename: str) -> None:
        """Store the bytes that :func:`serialize` made."""
        if self.write:
            self._store(filename, lambda f: f.write(data))

    def write_snapshot(self, snapshot: Mapping, filename: str) -> None:
        """``torch.save`` a snapshot that nothing changes any more (already checked by :func:`require_finite`)."""
        if self.write:
            self._store(filename, lambda f: torch.save(snapshot, f))

    def _store(self, filename: str, write: Callable[[IO[bytes]], Any]) -> None:
        self._saves += 1
        self.dirname.mkdir(parents=True, exist_ok=True)
        path = self.dirname / filename
        wrap = self.wrap_file or (lambda f, _: f)
        digest = atomic_write(path, lambda f: write(wrap(f, self._saves)))
        atomic_write_bytes(_sidecar(path), f"{digest}  {filename}\n".encode())
        self._pending_removal = [name for name in self._pending_removal if name != filename]
        self._remove_pending()

    def remove(self, filename: str) -> None:
        """Called by Checkpoint *before* the new save: defer until that save has succeeded."""
        self._pending_removal.append(filename)

    def _remove_pending(self) -> None:
        for name in self._pending_removal:
            for p in (self.dirname / name, _sidecar(self.dirname / name)):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        if self._pending_removal:
            fsync_dir(self.dirname)
        self._pending_removal = []


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def serialize(checkpoint: Mapping) -> bytes:
    """The bytes ``torch.save`` writes for ``checkpoint`` (after :func:`require_finite`)."""
    require_finite(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def require_finite(checkpoint: Mapping) -> None:
    """Refuse to save model weights that hold NaN or inf (raises :class:`NonFiniteLossError`)."""
    weights = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    for name, tensor in (weights or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not all_finite(tensor):
            raise NonFiniteLossError(
                f"the weights became non-finite (model.{name}); no checkpoint was written and the last good one is kept: "
                "lower --lr or use --clip-grad-norm"
            )


def make_train_checkpoint(to_save: Mapping[str, Any], saver: AtomicSaver, n_saved: int) -> Checkpoint:
    """The resumable checkpoint, named by iteration, keeping the newest ``n_saved``."""
    return Checkpoint(
        to_save, saver, n_saved=n_saved, include_self=True, filename_pattern=TRAIN_PATTERN,
        global_step_transform=lambda engine, _: engine.state.iteration,
    )


def make_best_checkpoint(model: nn.Module, meta: Any, saver: AtomicSaver, global_step: Any,
                         preprocess: Any = None, score_function: Callable[[Any], float] | None = None,
                         score_name: str = "neg_val_loss") -> Checkpoint:
    """The model with the best score so far (one file; by default the lowest validation loss), with the
    preprocessing its inputs need. The score is higher-is-better; the checkpointer keeps it as each file's priority.
    """
    objects = {"model": model, "meta": meta} | ({"preprocess": preprocess} if preprocess is not None else {})
    return Checkpoint(
        objects, saver, n_saved=1, filename_pattern=BEST_PATTERN,
        score_function=score_function or (lambda engine: -float(engine.state.metrics["loss"])), score_name=score_name,
        global_step_transform=global_step,
    )


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the reason."""


def read_checkpoint(path: Path, require_checksum: bool = False, max_bytes: int | None = None) -> dict[str, Any]:
    """Verify and load one checkpoint file safely; raises :class:`CheckpointError` with the reason.

    Files larger than ``max_bytes`` (default :func:`max_checkpoint_bytes`) are refused before being read.
    """
    path = Path(path)
    check_checkpoint_file(path, max_bytes)
    sidecar = _sidecar(path)
    if sidecar.is_file():
        if sha256_file(path) != _expected_digest(sidecar):
            raise CheckpointError(f"{path}: SHA-256 does not match {sidecar.name} (the file is damaged or was changed)")
    elif require_checksum:
        raise CheckpointError(f"{path}: no {sidecar.name} (its save was interrupted)")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values (a pickle payload?); nothing from it was run"
        ) from None
    except Exception as exc:  # RuntimeError for damage that the CRCs cannot see, ...
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an ignite_app checkpoint (expected a dict, found {type(state).__name__})")
    return state


def check_checkpoint_file(path: Path, max_bytes: int | None = None) -> None:
    """A regular, non-empty file of at most ``max_bytes``: checked by type and size before anything reads it."""
    mode = _stat_mode(path)
    if mode is None:
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: {file_kind(mode)}, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    bound = max_checkpoint_bytes() if max_bytes is None else min(max_bytes, max_checkpoint_bytes())
    if size > bound:
        raise CheckpointError(f"{path}: {size} bytes, more than a checkpoint of this run can hold ({bound}); "
                              f"not read (set {MAX_BYTES_ENV} to allow larger files)")


def max_checkpoint_bytes() -> int:
    """The largest checkpoint file read at all: ``IGNITE_APP_MAX_CHECKPOINT_BYTES``, else 64 GiB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return 64 * 2**30
    if not text.isdigit():
        raise UserError(f"invalid {MAX_BYTES_ENV}={text[:40]!r}: expected a number of bytes")
    return int(text)


def size_bound(model: nn.Module) -> int:
    """A generous bound on a resumable checkpoint of ``model``: weights, optimizer state, gradients and the rest."""
    return 16 * _tensor_bytes(model.state_dict()) + 256 * 2**20


def _stat_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _expected_digest(sidecar: Path) -> str:
    """The hex digest a ``.sha256`` sidecar names ("" for one that is damaged, binary or not a file)."""
    try:
        text = read_bounded(sidecar, "checksum file", 4096).decode("ascii")
    except (UserError, UnicodeDecodeError):
        return ""
    return text.split()[0] if text.strip() else ""


def _check_archive(path: Path) -> None:
    """Our checkpoints are torch zip archives; check every member's CRC (``torch.load`` does not).

    The legacy raw-pickle format is refused outright: it has no checksums at all. This overlaps
    with the SHA-256 sidecar but is kept: a file copied without its sidecar, or one whose sidecar
    a kill prevented, is still checked. Both are cheap: measured on the default CNN's 1.7 MiB
    checkpoint, 1.4 ms for the SHA-256 and 1.2 ms for the CRCs (2-core VM, shared, medians of 15).
    """
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (truncated, or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: the archive is damaged ({exc})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: CRC check failed for {bad} (the file is damaged)")


def require_keys(state: Mapping[str, Any], keys: tuple[str, ...], path: Path) -> None:
    """Check that a loaded checkpoint holds ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a resumable ignite_app checkpoint (missing {', '.join(missing)})")


def check_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Check parameter names and shapes against ``model`` (the bare module) before loading anything."""
    own = model.state_dict()
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: the model entry is not a state dict")
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{path}: the checkpoint is for another model architecture ({detail}); use a checkpoint of this model")
    for name, tensor in own.items():
        saved = state[name]
        if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape:
            got = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise CheckpointError(
                f"{path}: parameter {name} has shape {got} in the checkpoint but {tuple(tensor.shape)} in the model; "
                "use a checkpoint of this model"
            )


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], path: Path) -> None:
    """Check the optimizer's group layout and per-parameter state shapes."""
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{path}: the optimizer state does not fit this optimizer's parameter groups")
    own_keys = {k for g in optimizer.param_groups for k in g if k != "params"}
    for own, saved in zip(optimizer.param_groups, groups):
        if len(saved.get("params", [])) != len(own["params"]) or set(saved) - {"params"} != own_keys:
            raise CheckpointError(f"{path}: the optimizer state is for another optimizer or model layout")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in groups for i in g["params"]]
    for pid, param in zip(ids, params):
        for key, value in state.get("state", {}).get(pid, {}).items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise CheckpointError(f"{path}: optimizer state {key!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")


def train_checkpoints(run_dir: Path) -> list[Path]:
    """Resumable checkpoints in a run directory, newest (highest iteration) first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_*.pt") if (m := _TRAIN_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best-model file of a run, if there is one (the highest iteration: 1080 beats 90)."""
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / CHECKPOINT_DIR).glob("best_model_*.pt")
             if (m := _BEST_NAME.match(p.name))]
    return max(found)[1] if found else None


def iteration_of(path: Path) -> int | None:
    """The iteration in a checkpoint's name (``checkpoint_180.pt`` -> 180), or None."""
    match = _ANY_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def set_aside_newer(run_dir: Path, iteration: int) -> list[Path]:
    """Move the checkpoints saved after ``iteration`` (and their sidecars) into ``checkpoints/rolled-back/``.

    A resume from an older checkpoint rolls the run back: the newer files are another history, kept
    for the user but out of the way of the next resume and of the best-model choice. Returns the new paths.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    newer = sorted(p for p in folder.glob("*.pt") if (n := iteration_of(p)) is not None and n > iteration)
    if not newer:
        return []
    aside = folder / ROLLED_BACK_DIR
    aside.mkdir(exist_ok=True)
    moved = []
    for path in newer:
        target = _free_name(aside / path.name)
        if _sidecar(path).exists():
            os.replace(_sidecar(path), _sidecar(target))
        os.replace(path, target)
        moved.append(target)
    fsync_dir(aside)
    fsync_dir(folder)
    return moved


def _free_name(path: Path) -> Path:
    """``path``, or ``path`` with ``.1``, ``.2``, ... before its suffix if taken (a second roll-back)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove temporary files left by an interrupted save."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return remove_stale_temporaries(folder) if folder.is_dir() else []


def remove_evicted(run_dir: Path, kept: set[str], upto: int) -> list[Path]:
    """Delete checkpoint files up to iteration ``upto`` that are not in ``kept``; returns them.

    A kill between a save and the deferred removal of the file it pushed out of the kept set
    leaves that file behind; the accepted checkpoint's bookkeeping says it should be gone.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    evicted = sorted(p for p in folder.glob("*.pt") if (m := _ANY_NAME.match(p.name)) and int(m.group(1)) <= upto and p.name not in kept)
    for path in evicted:
        for p in (path, _sidecar(path)):
            p.unlink(missing_ok=True)
    if evicted:
        fsync_dir(folder)
    return evicted


class BackgroundSaver(BaseSaveHandler):
    """Serialises and writes checkpoints on a worker thread, so training does not wait for them.

    The calling (training) thread only checks the weights and copies the state to CPU memory in one
    pass (:class:`~ignite_app.io.snapshot.Snapshots`: ~20x cheaper than ``torch.save`` into memory,
    which took 0.6 s an epoch at 17M parameters); one worker runs ``torch.save`` of that snapshot
    into an :class:`AtomicSaver`, in order, so each file is still whole or absent. At most one copy
    of the state is alive: the best model and the training checkpoint of one epoch end share their
    weights, and a save that would need more waits for the writes in flight first. A failed write
    (a full disk, ...) is raised by the next save or by :meth:`close`, and nothing is written after
    it, so the newest checkpoint on disk stays the last good one.
    """

    def __init__(self, saver: AtomicSaver, clock: Callable[[], Any] | None = None) -> None:
        from ignite_app.io.snapshot import Snapshots

        self.saver = saver
        self.clock = clock  # the training step: saves at the same step share their copies (None: nothing is shared)
        self.snapshots = Snapshots()
        self._budget = 0  # bytes of one copy of the state: the largest checkpoint seen
        self._pending: list[Any] = []  # futures, oldest first
        self._removals: list[str] = []
        self._failed = False
        self._pool: Any = None

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self._collect(keep=len(self._pending))  # re-raise a failed write now
        removals, self._removals = self._removals, []
        if not self.saver.write:
            return
        require_finite(checkpoint)  # here, so that the error comes from the step that made the weights
        self._budget = max(self._budget, _tensor_bytes(checkpoint))
        generation = self.clock() if self.clock is not None else None
        if not self._pending or self._needs_second_copy(checkpoint, generation):
            self._collect(keep=0)  # the training thread waits only if the writes are slower than the epochs
            self.snapshots.clear()
        snapshot = self.snapshots.take(checkpoint, generation)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending.append(self._pool.submit(self._write, removals, lambda: self.saver.write_snapshot(snapshot, filename)))

    def remove(self, filename: str) -> None:
        """Checkpoint asks before the new save: handed to the writer with that save, in order."""
        self._removals.append(filename)

    def close(self) -> None:
        """Wait until every queued checkpoint is on disk; raise the first failed write."""
        try:
            self._collect(keep=0)
        finally:
            self.snapshots.clear(keep_buffers=False)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _needs_second_copy(self, checkpoint: Mapping, generation: Any) -> bool:
        """Whether snapshotting ``checkpoint`` now would hold a second copy of the state beside the writes in flight.

        That is the case when a tensor has a copy from another training step (the next epoch's weights
        and optimizer state). Tensors that only this checkpoint holds (the best model's
        preprocessing, RNG states) are copied beside the others: a rule on total bytes alone made the
        training checkpoint wait for the best model's write at every epoch end (0.5 s an epoch at 17M
        parameters). Tensors made anew for every checkpoint are bounded by a second copy of the largest one.
        """
        if self.snapshots.has_stale_copy(checkpoint, generation):
            return True
        return self.snapshots.cached_bytes() + self.snapshots.bytes_needed(checkpoint, generation) > 2 * self._budget

    def _collect(self, keep: int) -> None:
        while self._pending and (self._pending[0].done() or len(self._pending) > keep):
            self._pending.pop(0).result()  # re-raises the write's error here, on the training thread

    def _write(self, removals: list[str], store: Callable[[], None]) -> None:
        if self._failed:
            return  # nothing after a failed write: the newest checkpoint on disk stays the last good one
        try:
            for name in removals:
                self.saver.remove(name)
            store()
        except BaseException:
            self._failed = True
            raise


def _tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in a (nested) checkpoint."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0
