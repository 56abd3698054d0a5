"""The run configuration: one frozen dataclass, built and validated at the edge.

Lower layers receive a :class:`Config` and never see click, argparse or raw dicts.
This module imports no torch so that the command line stays fast to start.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from ignite_app.errors import UserError

TASKS = ("auto", "classification", "regression")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("nccl", "gloo")
BUILTIN_DATASETS = ("digits", "synthetic-regression")
BUILTIN_MODELS = ("auto", "mlp", "cnn")

# Keys that fix what a run computes: changing them on resume would silently break it.
RESUME_FIXED_KEYS = (
    "dataset", "target", "task", "model", "batch_size", "lr", "optimizer", "weight_decay",
    "lr_schedule", "seed", "amp", "grad_accum", "clip_grad_norm", "in_memory",
)


@dataclass(frozen=True)
class Config:
    """Everything a training run needs, validated on construction."""

    dataset: str = "digits"
    target: str | None = None
    task: str = "auto"
    model: str = "auto"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    seed: int = 0
    patience: int = 5
    num_workers: int = 0
    n_saved: int = 2
    output_dir: str | None = None
    device: str = "auto"
    progress: bool | None = None
    log_every: int = 10
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool | None = None  # issue 16: None = on where it can record (one CUDA process, see train/cudagraph.py)
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    deterministic: bool = False
    time_limit: float | None = None
    in_memory: bool = True
    backend: str | None = None
    resume: str | None = None
    # issue 16: torch CPU threads; None until a run resolves it (threads.use_threads), then recorded in config.yaml
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("compile-mode", self.compile_mode, COMPILE_MODES)
        if self.backend is not None:
            _check_choice("backend", self.backend, BACKENDS)
        _check_dataset(self.dataset)
        _check_model(self.model)
        _check_text("device", self.device, optional=False)
        for name in ("target", "output_dir", "resume"):
            _check_text(name, getattr(self, name), optional=True)
        _check_flag("progress", self.progress, optional=True)
        for name in ("channels_last", "compile", "deterministic", "in_memory"):
            _check_flag(name, getattr(self, name), optional=False)
        _check_flag("cuda_graph", self.cuda_graph, optional=True)  # issue 16: None is automatic
        _check_number("epochs", self.epochs, minimum=1)
        _check_number("batch-size", self.batch_size, minimum=1)
        _check_number("patience", self.patience, minimum=0)
        _check_number("num-workers", self.num_workers, minimum=0)
        _check_number("n-saved", self.n_saved, minimum=1)
        _check_number("log-every", self.log_every, minimum=1)
        _check_number("grad-accum", self.grad_accum, minimum=1)
        _check_number("seed", self.seed, minimum=0)
        _check_positive("lr", self.lr)
        _check_positive("weight-decay", self.weight_decay, allow_zero=True)
        if self.clip_grad_norm is not None:
            _check_positive("clip-grad-norm", self.clip_grad_norm)
        if self.time_limit is not None:
            _check_positive("time-limit", self.time_limit)
        if self.cuda_graph:
            _check_cuda_graph(self)
        _check_threads(self.threads)

    @property
    def is_user_model(self) -> bool:
        """True when ``model`` names the user's own class as ``package.module:ClassName``."""
        return ":" in self.model

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The keys saved in ``config.yaml``: everything but the one-off ``resume`` path."""
        data = dataclasses.asdict(self)
        data.pop("resume")
        return data


def config_keys() -> tuple[str, ...]:
    """Every key a YAML config file may hold."""
    return tuple(f.name for f in fields(Config))


def default_of(key: str) -> Any:
    """The default value of one config key (for ``--help``)."""
    return {f.name: f.default for f in fields(Config)}[key]


def build_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> Config:
    """Merge a config file's values with the flags given on the command line (flags win)."""
    merged: dict[str, Any] = {}
    for source in (file_values, flag_values):
        for key, value in source.items():
            merged[key.replace("-", "_")] = value
    unknown = sorted(set(merged) - set(config_keys()))
    if unknown:
        raise UserError(
            f"unknown config key {unknown[0]!r}; valid keys are: {', '.join(config_keys())}"
        )
    if isinstance(merged.get("time_limit"), str):
        merged["time_limit"] = parse_duration(merged["time_limit"])
    if isinstance(merged.get("target"), int) and not isinstance(merged["target"], bool):
        merged["target"] = str(merged["target"])  # YAML reads `target: 0` as a number: a column index
    for key, kind in _NUMERIC_KEYS.items():
        if key in merged and merged[key] is not None:
            merged[key] = _coerce(key, merged[key], kind)
    try:
        return Config(**merged)
    except TypeError as exc:  # a YAML value of the wrong type, e.g. a list
        raise UserError(f"invalid config: {exc}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with user-facing errors."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"config file {str(path)!r} is not valid YAML ({first}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def save_yaml(cfg: Config, path: Path) -> None:
    """Write the resolved config atomically, so a kill never leaves half a file."""
    import yaml

    from ignite_app.io.atomic import atomic_write_bytes

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_bytes(path, text.encode())


def default_output_dir(dataset: str, now: datetime | None = None) -> str:
    """``runs/<dataset>-<timestamp>``, with the dataset reduced to a safe folder name."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = dataset.rsplit("/", 1)[-1].replace(":", "-")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return str(Path("runs") / f"{name}-{stamp}")


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in a wall-clock duration such as ``3h30m``, ``90m``, ``45s`` or ``120``."""
    text = str(text).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groups()):
        raise UserError(f"invalid --time-limit {text!r}: use a duration such as 3h30m, 90m, 45s or seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


_NUMERIC_KEYS = {
    "epochs": int, "batch_size": int, "seed": int, "patience": int, "num_workers": int,
    "n_saved": int, "log_every": int, "grad_accum": int,
    "lr": float, "weight_decay": float, "clip_grad_norm": float, "time_limit": float,
    "threads": int,  # issue 16
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise UserError(f"invalid {_flag(key)} {value!r}: expected a number")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"invalid {_flag(key)} {value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if kind is int and isinstance(value, float) and number != value:
        raise UserError(f"invalid {_flag(key)} {value!r}: expected an integer")
    return number


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_cuda_graph(cfg: Config) -> None:
    """--cuda-graph records one fixed step: refuse the options that change a step from the host."""
    conflicts = [
        ("--amp fp16", cfg.amp == "fp16", "use --amp bf16 or off"),
        (f"--grad-accum {cfg.grad_accum}", cfg.grad_accum > 1, "use --grad-accum 1"),
        ("--compile", cfg.compile, "drop --compile (its reduce-overhead mode records graphs of its own)"),
        (f"--optimizer {cfg.optimizer}", cfg.optimizer not in ("adam", "adamw"), "use adam or adamw"),
    ]
    for flag, bad, fix in conflicts:
        if bad:
            raise UserError(f"--cuda-graph does not work with {flag}: {fix}, or drop --cuda-graph")


def _check_threads(threads: Any) -> None:
    """``--threads``: unset (resolved when the run starts) or a positive integer."""
    if threads is not None:
        _check_number("threads", threads, minimum=1)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"invalid --{name} {value!r}: choose one of {', '.join(choices)}")


def _check_number(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"invalid --{name} {value!r}: expected an integer >= {minimum}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"invalid --{name} {value!r}: expected a finite number {bound}")


def _check_text(key: str, value: Any, optional: bool) -> None:
    if not isinstance(value, str) and not (optional and value is None):
        raise UserError(f"invalid {_flag(key)} {value!r}: expected a string (quote it in the YAML file)")


def _check_flag(key: str, value: Any, optional: bool) -> None:
    if not isinstance(value, bool) and not (optional and value is None):
        raise UserError(f"invalid {_flag(key)} {value!r}: expected true or false")


def _check_dataset(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise UserError("invalid --dataset: expected a name such as digits")
    if value in BUILTIN_DATASETS or value.startswith(("csv:", "npz:")):
        if value in ("csv:", "npz:"):
            raise UserError(f"invalid --dataset {value!r}: give a path, e.g. {value}data/train.{value[:3]}")
        return
    if not _is_import_path(value):
        raise UserError(
            f"invalid --dataset {value!r}: use digits, synthetic-regression, csv:PATH, npz:PATH "
            "or package.module:NAME"
        )


def _check_model(value: Any) -> None:
    if not isinstance(value, str) or (value not in BUILTIN_MODELS and not _is_import_path(value)):
        raise UserError(f"invalid --model {value!r}: use mlp, cnn or package.module:ClassName")


def _is_import_path(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value) is not None
