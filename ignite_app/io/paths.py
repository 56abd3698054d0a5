"""Paths the user gives the commands: run directories, checkpoints and output files. Imports no torch."""

from __future__ import annotations

from pathlib import Path

from ignite_app.config import Config, build_config, load_yaml
from ignite_app.errors import UserError

CONFIG_FILE = "config.yaml"
HPARAMS_DIR = "hparams"  # the HParams sub-run inside a run directory (tensorboardX's add_hparams)


def is_run_dir(path: Path) -> bool:
    """True for a folder that ``ignite-app train`` wrote (it holds config.yaml)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def require_run_dir(path: Path) -> Path:
    """``path`` if it is a run directory, else a one-line error that says what to pass."""
    if not path.exists():
        raise UserError(f"{path}: no such directory; pass a run directory made by ignite-app train")
    if not is_run_dir(path):
        raise UserError(
            f"{path} holds no {CONFIG_FILE}, so it is not a run directory of ignite-app; "
            "pass a folder made by ignite-app train"
        )
    return path


def expand_runs(paths: list[Path]) -> list[Path]:
    """Run directories named by ``paths``; a folder of runs (such as ``runs/``) stands for every run in it."""
    found: list[Path] = []
    for path in paths:
        inside = sorted(p for p in path.iterdir() if is_run_dir(p)) if path.is_dir() and not is_run_dir(path) else []
        found += inside or [require_run_dir(path)]
    return found


def run_config(run_dir: Path) -> Config:
    """The resolved configuration a run saved in its config.yaml."""
    return build_config(load_yaml(run_dir / CONFIG_FILE), {})


def resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a checkpoint file, or for a run directory (its best model)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; pass a checkpoint file or a run directory")
    if path.is_dir():
        require_run_dir(path)  # before importing torch: a wrong path fails at once
        from ignite_app.io.checkpoint import best_checkpoint

        best = best_checkpoint(path)
        if best is None:
            raise UserError(f"{path} has no best_model_*.pt yet (no validation has finished); pass a checkpoint file")
        return path, best
    from ignite_app.io.checkpoint import CHECKPOINT_DIR

    run_dir = path.parent.parent
    if path.parent.name != CHECKPOINT_DIR or not is_run_dir(run_dir):
        raise UserError(
            f"{path}: a checkpoint must sit in the {CHECKPOINT_DIR}/ folder of its run directory, "
            f"whose {CONFIG_FILE} says how to rebuild the model; pass it from there"
        )
    return run_dir, path


def resume_run_dir(resume: Path) -> Path:
    """The run directory that a ``--resume`` path (a run directory or a checkpoint in its checkpoints/ folder) points into."""
    if not resume.exists():
        raise UserError(f"--resume {resume}: no such file or directory")
    if resume.is_dir():
        run_dir = resume
    else:
        from ignite_app.io.checkpoint import CHECKPOINT_DIR
        from ignite_app.io.safefile import require_regular

        require_regular(resume, "--resume")  # a FIFO or /dev/zero: refused, not replaced by another checkpoint
        if resume.parent.name != CHECKPOINT_DIR:
            raise UserError(f"--resume {resume}: a checkpoint file must sit in a run's {CHECKPOINT_DIR}/ folder; pass the run directory")
        run_dir = resume.parent.parent
    if not is_run_dir(run_dir):
        raise UserError(f"--resume {resume}: {run_dir} holds no {CONFIG_FILE}, so it is not a run directory of ignite-app")
    return run_dir


def output_file(path: Path, flag: str, suffixes: tuple[str, ...]) -> str:
    """Check an output path before any work is done; returns its suffix (``.csv``, ``.png``, ...)."""
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"{flag} {path}: unsupported file type {suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if inside_checkpoints(path):
        raise UserError(f"{flag} {path}: inside a run's checkpoints/ folder, which only training writes; choose another path")
    return suffix


# issue 15: never overwrite what the user did not name as output


def inside_checkpoints(path: Path) -> bool:
    """Whether ``path`` lies in the checkpoints/ folder (or below) of a run directory."""
    from ignite_app.io.checkpoint import CHECKPOINT_DIR

    resolved = Path(path).resolve()
    return any(folder.name == CHECKPOINT_DIR and is_run_dir(folder.parent) for folder in resolved.parents)


def guard_output(path: Path, flag: str, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is one of the command's ``inputs``, or that exists already unless ``overwrite``."""
    for source in inputs:
        if _same_path(path, source):
            raise UserError(f"{flag} {path} is also an input of this command; write to another file")
    if inside_checkpoints(path):
        raise UserError(f"{flag} {path}: inside a run's checkpoints/ folder, which only training writes; choose another path")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another file")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(a).exists() and Path(a).samefile(b))
    except OSError:
        return False
