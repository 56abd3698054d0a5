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

from ignite_app.errors import UserError, first_line

TASKS = ("auto", "classification", "regression")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("nccl", "gloo")
BUILTIN_DATASETS = ("digits", "synthetic-regression")
BUILTIN_MODELS = ("auto", "mlp", "cnn")
TRACKERS = ("tensorboard", "mlflow")  # issue 14: TensorBoard is always on; the others are optional extras
REQUEUE_SIGNALS = ("USR1", "USR2")  # issue 17: the warning a SLURM job asks for with sbatch --signal=USR1@90
NA_POLICIES = ("impute", "drop", "error")  # issue 11: missing cells in tabular data

# Keys that fix what a run computes: changing them on resume would silently break it.
RESUME_FIXED_KEYS = (
    "dataset", "target", "task", "model", "batch_size", "lr", "optimizer", "weight_decay",
    "lr_schedule", "seed", "amp", "grad_accum", "clip_grad_norm", "in_memory",
    "val_fraction", "val_dataset", "standardize", "na", "encoding",  # issue 11: they change the data
    "image_size", "augment", "steps_per_epoch",  # issue 13
)
RESUME_FIXED_KEYS += ("model_args", "monitor", "mode", "warmup_epochs", "warmup_steps", "ema_decay",
                      "class_weights", "balanced_sampler")  # issue 12
LR_SCHEDULES += ("onecycle", "plateau")  # issue 12


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
    # issue 14: trackers besides TensorBoard
    tracker: str = "tensorboard"
    mlflow_uri: str | None = None
    # issue 17: preemption (SLURM requeue)
    requeue_signal: str | None = None
    # issue 13: image folders, augmentation on the device, data larger than memory
    image_size: int | None = None
    cache_dir: str | None = None
    strict: bool = False
    augment: str = "off"
    memory_budget_mb: int | None = None
    input_key: str | None = None
    target_key: str | None = None
    steps_per_epoch: int | None = None
    # issue 11: tabular data (splits, preprocessing, reading files, batch size for small data)
    val_fraction: float = 0.2
    val_dataset: str | None = None
    test_dataset: str | None = None
    standardize: bool = True
    na: str = "impute"
    encoding: str | None = None
    auto_batch: bool = False  # the command line sets it when --batch-size is not given
    # issue 12: model arguments, metrics and the monitor, schedules, EMA, class imbalance, initial weights
    model_args: tuple[tuple[str, Any], ...] = ()
    metrics: tuple[str, ...] = ()  # empty: accuracy for classification, mae for regression
    monitor: str = "val/loss"
    mode: str | None = None  # None: max for scores (accuracy, f1, ...), min for losses and errors
    warmup_epochs: int = 0
    warmup_steps: int = 0
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    ema_decay: float | None = None
    class_weights: Any = "none"  # none, auto, or the weights per class ("auto" is saved as the weights it found)
    balanced_sampler: bool = False
    init_weights: str | None = None
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
        _check_trackers(self)  # issue 14
        if self.requeue_signal is not None:  # issue 17
            _check_choice("requeue-signal", self.requeue_signal, REQUEUE_SIGNALS)
        _check_image_options(self)  # issue 13
        _check_tabular(self)
        _check_models_and_metrics(self)  # issue 12
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
        data["model_args"] = model_args_dict(self.model_args)  # a mapping in config.yaml
        data["metrics"] = list(self.metrics)
        if isinstance(self.class_weights, tuple):
            data["class_weights"] = list(self.class_weights)
        return data

    @property
    def monitor_mode(self) -> str:
        """``--mode``, else ``max`` for scores and ``min`` for losses and errors."""
        return self.mode or metric_direction(self.monitor.partition("/")[2])


def changed_fixed_key(saved: Config, asked: Config) -> str | None:
    """The first key of RESUME_FIXED_KEYS whose value differs between a run's saved config and ``asked``, or None.

    batch_size is left out: it may change with the number of processes (train.resume.check_global_batch
    compares the global batch instead).
    """
    return next((k for k in RESUME_FIXED_KEYS if k != "batch_size" and not _same_on_resume(k, getattr(saved, k), getattr(asked, k))),
                None)


def _same_on_resume(key: str, saved: Any, asked: Any) -> bool:
    """Whether a fixed key keeps its value: ``--class-weights auto`` is the run's own, saved as the weights it found."""
    if key == "class_weights" and asked == "auto" and isinstance(saved, tuple):
        return True
    return saved == asked


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
            key = key.replace("-", "_")
            merged[key] = merge_model_args(merged.get(key), value) if key == "model_args" else value
    unknown = sorted(set(merged) - set(config_keys()))
    if unknown:
        raise UserError(
            f"unknown config key {_short(unknown[0])}; valid keys are: {', '.join(config_keys())}"
        )
    if isinstance(merged.get("time_limit"), str):
        merged["time_limit"] = parse_duration(merged["time_limit"])
    _tabular_defaults(merged, {key.replace("-", "_") for key in flag_values})
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
    """Read a YAML config file into a dict, with user-facing errors; bounded in size, depth and aliases."""
    import yaml

    from ignite_app.io.safefile import MAX_YAML_BYTES, decode_text, parse_yaml, read_bounded

    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
    text = decode_text(read_bounded(path, "config file", MAX_YAML_BYTES), path, "config file")
    try:
        data = parse_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML ({first_line(exc)}); fix the file") from None
    except ValueError as exc:  # an integer of more than 4300 digits, ...
        raise UserError(f"config file {str(path)!r} holds a value that cannot be read ({first_line(exc, 100)}); fix the file") from None
    except RecursionError:  # a flow collection nested beyond Python's stack, before the depth check sees it
        raise UserError(f"config file {str(path)!r} is nested too deeply; fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of keys to values")
    _check_keys(data, path)
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
        raise UserError(f"invalid --time-limit {_short(text)}: use a duration such as 3h30m, 90m, 45s or seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


_NUMERIC_KEYS = {
    "epochs": int, "batch_size": int, "seed": int, "patience": int, "num_workers": int,
    "n_saved": int, "log_every": int, "grad_accum": int,
    "lr": float, "weight_decay": float, "clip_grad_norm": float, "time_limit": float,
    "val_fraction": float, "image_size": int, "memory_budget_mb": int, "steps_per_epoch": int,  # issue 13
    "warmup_epochs": int, "warmup_steps": int, "plateau_patience": int, "plateau_factor": float, "ema_decay": float,  # issue 12
    "threads": int,  # issue 16
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise UserError(f"invalid {_flag(key)} {_short(value)}: expected a number")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"invalid {_flag(key)} {_short(value)}: expected {'an integer' if kind is int else 'a number'}") from None
    if kind is int and isinstance(value, float) and number != value:
        raise UserError(f"invalid {_flag(key)} {_short(value)}: expected an integer")
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


def tracker_names(text: str) -> tuple[str, ...]:
    """The trackers a ``--tracker`` value names, TensorBoard always first (issue 14)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    return ("tensorboard", *dict.fromkeys(n for n in names if n != "tensorboard"))


def _check_trackers(cfg: Config) -> None:
    _check_text("tracker", cfg.tracker, optional=False)
    _check_text("mlflow_uri", cfg.mlflow_uri, optional=True)
    unknown = [n for n in tracker_names(cfg.tracker) if n not in TRACKERS]
    if unknown:
        raise UserError(f"invalid --tracker {unknown[0]!r}: choose from {', '.join(TRACKERS)}, comma-separated")


def _tabular_defaults(merged: dict[str, Any], flags: set[str]) -> None:
    """A batch size picked for small data unless one was given; --val-dataset/--test-dataset may be bare file paths."""
    if "batch_size" in flags:
        merged["auto_batch"] = False
    merged.setdefault("auto_batch", "batch_size" not in merged)
    for key in ("val_dataset", "test_dataset"):
        if isinstance(merged.get(key), str):
            merged[key] = file_dataset(merged[key])


def file_dataset(value: str) -> str:
    """``data.csv``, ``data.csv.gz`` or ``data.npz`` as ``csv:data.csv`` ...; anything else unchanged."""
    lower = value.lower()
    if lower.endswith((".csv", ".csv.gz")) and not value.startswith("csv:"):
        return "csv:" + value
    if lower.endswith(".npz") and not value.startswith("npz:"):
        return "npz:" + value
    return value


def _check_tabular(cfg: Config) -> None:
    """The options of tabular data (issue 11)."""
    ok = isinstance(cfg.val_fraction, (int, float)) and not isinstance(cfg.val_fraction, bool) and 0 < cfg.val_fraction < 1
    if not ok:
        raise UserError(f"invalid --val-fraction {cfg.val_fraction!r}: expected a number between 0 and 1, e.g. 0.2")
    for key in ("val_dataset", "test_dataset"):
        value = getattr(cfg, key)
        _check_text(key, value, optional=True)
        if value is not None and not value.startswith(("csv:", "npz:")):
            raise UserError(f"invalid {_flag(key)} {value!r}: give a file as csv:PATH or npz:PATH")
        if value is not None and not (cfg.dataset.startswith(("csv:", "npz:")) or cfg.dataset in BUILTIN_DATASETS):
            raise UserError(f"{_flag(key)} works with csv:, npz: and built-in datasets, not {cfg.dataset!r}; "
                            "return the split from your dataset factory instead")
    _check_choice("na", cfg.na, NA_POLICIES)
    _check_text("encoding", cfg.encoding, optional=True)
    for key in ("standardize", "auto_batch"):
        _check_flag(key, getattr(cfg, key), optional=False)


def _check_threads(threads: Any) -> None:
    """``--threads``: unset (resolved when the run starts) or a positive integer."""
    if threads is not None:
        _check_number("threads", threads, minimum=1)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"invalid --{name} {_short(value)}: choose one of {', '.join(choices)}")


def _check_number(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"invalid --{name} {_short(value)}: expected an integer >= {minimum}")
    if value > MAX_INT:  # what torch (seeds, sizes) and TensorBoard (hparams) take, with room for seed + rank
        raise UserError(f"invalid --{name} {_short(value)}: expected an integer from {minimum} to {MAX_INT}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"invalid --{name} {_short(value)}: expected a finite number {bound}")


def _check_text(key: str, value: Any, optional: bool) -> None:
    if not isinstance(value, str) and not (optional and value is None):
        raise UserError(f"invalid {_flag(key)} {_short(value)}: expected a string (quote it in the YAML file)")


def _check_flag(key: str, value: Any, optional: bool) -> None:
    if not isinstance(value, bool) and not (optional and value is None):
        raise UserError(f"invalid {_flag(key)} {_short(value)}: expected true or false")


def _check_dataset(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise UserError("invalid --dataset: expected a name such as digits")
    if value in BUILTIN_DATASETS or value.startswith(("csv:", "npz:", "imagefolder:", "npy:")):
        if value in ("csv:", "npz:", "imagefolder:", "npy:"):
            example = {"imagefolder:": "data/images", "npy:": "data/arrays"}.get(value, f"data/train.{value[:3]}")  # issue 13
            raise UserError(f"invalid --dataset {_short(value)}: give a path, e.g. {value}{example}")
        return
    if not _is_import_path(value):
        raise UserError(
            f"invalid --dataset {_short(value)}: use digits, synthetic-regression, csv:PATH, npz:PATH, "
            "npy:DIR, imagefolder:PATH or package.module:NAME"
        )


def _check_model(value: Any) -> None:
    if not isinstance(value, str) or (value not in BUILTIN_MODELS and not _is_import_path(value)):
        raise UserError(f"invalid --model {_short(value)}: use mlp, cnn or package.module:ClassName")


DATA_PREFIXES = ("csv:", "npz:", "npy:", "imagefolder:")  # --dataset values that name files, not code


def names_code(value: str) -> bool:
    """Whether a --model or --dataset value names code to import (``package.module:NAME``), not a file or a built-in.

    The built-in models (``ignite_app.models:NAME``) are part of this package, not someone else's code.
    """
    if value.startswith(DATA_PREFIXES) or value.startswith("ignite_app.models:"):
        return False
    return _is_import_path(value)


def _is_import_path(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value) is not None


# issue 15: bounded values and messages for hostile or mistaken configs


def _check_keys(data: dict[Any, Any], path: Path) -> None:
    """Every key of a config file is a string (YAML reads ``1:`` or ``[a]:`` as other types)."""
    from ignite_app.io.safefile import short

    for key in data:
        if not isinstance(key, str):
            raise UserError(f"config file {str(path)!r} has the key {short(key)}, which is not a name; "
                            f"use keys such as epochs")


MAX_INT = 2**31 - 1  # the largest value an integer option takes


def _short(value: Any) -> str:
    """The value as quoted in an error message: at most a short prefix of it."""
    from ignite_app.io.safefile import short

    return short(value)


AUGMENTATIONS = ("crop", "flip", "resized-crop")


def augmentations(value: str) -> tuple[str, ...]:
    """The augmentations ``--augment`` names: ``off``, ``on`` (crop and flip) or a comma list of AUGMENTATIONS."""
    if value == "off":
        return ()
    if value == "on":
        return ("crop", "flip")
    return tuple(part.strip() for part in value.split(","))


def _check_image_options(cfg: Config) -> None:
    """issue 13: --image-size, --augment, --cache-dir, --strict, --memory-budget-mb (--val-fraction: _check_tabular)."""
    if cfg.image_size is not None:
        _check_number("image-size", cfg.image_size, minimum=4)
    for name in ("memory_budget_mb", "steps_per_epoch"):
        if getattr(cfg, name) is not None:
            _check_number(name.replace("_", "-"), getattr(cfg, name), minimum=1)
    for name in ("cache_dir", "input_key", "target_key"):
        _check_text(name, getattr(cfg, name), optional=True)
    _check_flag("strict", cfg.strict, optional=False)
    _check_text("augment", cfg.augment, optional=False)
    unknown = [a for a in augmentations(cfg.augment) if a not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"invalid --augment {cfg.augment!r}: use off, on, or a comma list of {', '.join(AUGMENTATIONS)}")
    if cfg.augment != "off" and not cfg.dataset.startswith(("imagefolder:", "npy:")):
        raise UserError(f"--augment applies to imagefolder: and npy: (uint8 images) datasets, not {cfg.dataset!r}; drop --augment")


# issue 12: model arguments (``--model-arg key=value`` and ``model_args:``), kept as immutable (key, value) pairs.

MODEL_ARG_KEY = re.compile(r"^[A-Za-z_]\w*$")
MAX_MODEL_ARG_CHARS = 10_000


def parse_model_args(texts: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--model-arg key=value`` flags as a dict; each value is read as a YAML scalar or list."""
    import yaml

    from ignite_app.io.safefile import parse_yaml

    args: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not MODEL_ARG_KEY.match(key):
            raise UserError(f"invalid --model-arg {text!r}: write it as name=value, e.g. --model-arg hidden=[128,64]")
        if len(raw) > MAX_MODEL_ARG_CHARS:
            raise UserError(f"invalid --model-arg {key}: the value is longer than {MAX_MODEL_ARG_CHARS} characters")
        try:
            args[key] = parse_yaml(raw) if raw.strip() else ""  # no anchors or aliases, bounded nesting
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise UserError(f"invalid --model-arg {key}: the value is not a YAML scalar or list ({first_line(exc, 100)}); "
                            "quote it or write it out in full") from None
    return args


def merge_model_args(earlier: Any, later: Any) -> Any:
    """Model arguments from a later source (flags) override an earlier one's (the file) key by key."""
    if earlier is None or later is None:
        return later if later is not None else earlier
    return {**model_args_dict(freeze_model_args(earlier)), **model_args_dict(freeze_model_args(later))}


def freeze_model_args(value: Any) -> tuple[tuple[str, Any], ...]:
    """Model arguments as sorted (name, value) pairs with lists made tuples; refuses what YAML scalars cannot say."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise UserError(f"invalid model_args {value!r}: expected a mapping of argument names to values")
    for key, _ in pairs:
        if not isinstance(key, str) or not MODEL_ARG_KEY.match(key):
            raise UserError(f"invalid model_args name {key!r}: expected a Python identifier")
    return tuple(sorted(((key, _freeze_value(key, v)) for key, v in pairs), key=lambda pair: pair[0]))


def model_args_dict(args: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Frozen model arguments as a plain dict of YAML values (tuples become lists)."""
    return {key: _thaw_value(value) for key, value in args}


def _freeze_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_value(key, v) for v in value)
    raise UserError(f"invalid model argument {key}={value!r}: use a number, string, true/false, null or a list of them")


def _thaw_value(value: Any) -> Any:
    return [_thaw_value(v) for v in value] if isinstance(value, tuple) else value


# issue 12: metrics and the monitor. Names only here (no torch); train/metrics.py builds Ignite's metrics.

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "topK", "auroc", "confusion_matrix")
REGRESSION_METRICS = ("mae", "mse", "rmse", "r2")
MINIMIZED_METRICS = ("loss", "mae", "mse", "rmse")
MONITOR_MODES = ("min", "max")
_TOP_K = re.compile(r"^top([1-9]\d?)$")


def is_metric_name(name: str) -> bool:
    """Whether ``name`` is a metric that --metrics knows (``top5`` stands for any ``topK``)."""
    return name in CLASSIFICATION_METRICS + REGRESSION_METRICS or _TOP_K.match(name) is not None


def top_k(name: str) -> int | None:
    """K of a ``topK`` metric name, else None."""
    match = _TOP_K.match(name)
    return int(match.group(1)) if match else None


def metric_direction(name: str) -> str:
    """``min`` for the loss and errors, ``max`` for scores."""
    return "min" if name in MINIMIZED_METRICS else "max"


def parse_metric_names(value: Any) -> tuple[str, ...]:
    """``--metrics accuracy,f1`` (or a YAML list) as a tuple of known names, in order, without repeats."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"invalid --metrics {value!r}: expected names separated by commas, e.g. accuracy,f1")
    names = [n.strip().lower() for n in names if n.strip()]
    for name in names:
        if name == "loss":
            raise UserError("--metrics: loss is always computed; leave it out")
        if not is_metric_name(name):
            known = ", ".join(CLASSIFICATION_METRICS + REGRESSION_METRICS).replace("topK", "topK (e.g. top5)")
            raise UserError(f"invalid --metrics name {name!r}: choose from {known}")
    return tuple(dict.fromkeys(names))


def _check_monitor(cfg: Config) -> None:
    if cfg.mode is not None:
        _check_choice("mode", cfg.mode, MONITOR_MODES)
    split, _, name = str(cfg.monitor).partition("/")
    if not isinstance(cfg.monitor, str) or split != "val" or not (name == "loss" or is_metric_name(name)):
        raise UserError(f"invalid --monitor {cfg.monitor!r}: use val/loss or val/NAME for a name in --metrics, e.g. val/accuracy")
    if name == "confusion_matrix":
        raise UserError("invalid --monitor val/confusion_matrix: a table is not a score; monitor val/accuracy or val/f1")


def _check_models_and_metrics(cfg: Config) -> None:
    """Freeze ``model_args``, ``metrics`` and ``class_weights`` in place, then check issue 12's options."""
    object.__setattr__(cfg, "model_args", freeze_model_args(cfg.model_args))  # a mapping becomes sorted pairs
    object.__setattr__(cfg, "metrics", parse_metric_names(cfg.metrics))
    _check_monitor(cfg)
    _check_run_options(cfg)


def _check_run_options(cfg: Config) -> None:
    for name in ("warmup_epochs", "warmup_steps", "plateau_patience"):
        _check_number(name.replace("_", "-"), getattr(cfg, name), minimum=0)
    if cfg.warmup_epochs and cfg.warmup_steps:
        raise UserError("--warmup-epochs and --warmup-steps both given: keep one")
    ok = isinstance(cfg.plateau_factor, (int, float)) and not isinstance(cfg.plateau_factor, bool)
    if not ok or not 0 < cfg.plateau_factor < 1:
        raise UserError(f"invalid --plateau-factor {cfg.plateau_factor!r}: expected a number between 0 and 1")
    _check_flag("balanced_sampler", cfg.balanced_sampler, optional=False)
    _check_text("init_weights", cfg.init_weights, optional=True)
    object.__setattr__(cfg, "class_weights", _class_weights(cfg.class_weights))
    decay = cfg.ema_decay
    if decay is not None and (not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 < decay < 1):
        raise UserError(f"invalid --ema-decay {decay!r}: expected a number between 0 and 1, such as 0.999")


def _class_weights(value: Any) -> str | tuple[float, ...]:
    """``none``, ``auto``, or a list of non-negative weights (one per class) as a tuple."""
    if value in ("none", "auto"):
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf") for w in value):
        return tuple(float(w) for w in value)
    raise UserError(f"invalid --class-weights {value!r}: use auto, none, or (in the config file) one weight >= 0 per class")
