"""``ignite-app tune``: an Optuna study whose trials are normal, resumable run directories.

Each trial trains through :func:`ignite_app.train.loop.train` into ``STUDY_DIR/trial-NNN``, with Optuna's
TPE sampler, and is pruned at a validation by optuna-integration's ``PyTorchIgnitePruningHandler``. The
study lives in shared storage (a journal file in the study directory by default, or an RDB URL), so several
processes or machines can work on one study; a trial whose process died on this machine is marked failed
and re-queued, and its run directory is resumed from its newest checkpoint.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ignite_app.config import Config, build_config, config_keys
from ignite_app.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, AppError, UserError

JOURNAL_FILE = "study.journal"  # the default storage, in the study directory
KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
UNTUNABLE = ("output_dir", "resume", "tracker", "mlflow_uri", "progress")
PRUNERS = ("median", "halving", "none")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class TuneSpec:
    """What ``tune`` was asked: the study, its size and how trials are built."""

    study_dir: Path
    trials: int
    search: dict[str, Any]  # name -> optuna distribution
    storage: str | None = None
    study_name: str | None = None
    pruner: str = "median"
    sampler_seed: int | None = None


def require_optuna() -> None:
    """Optuna and optuna-integration are importable, or one line names the extra to install."""
    try:
        import optuna  # noqa: F401
        import optuna_integration  # noqa: F401
    except ImportError:
        raise UserError('tune needs the tune extra: pip install "ignite_app[tune]" (optuna, optuna-integration)') from None


# --- the search file -------------------------------------------------------------------------------


def load_search(path: Path, base: Mapping[str, Any]) -> dict[str, Any]:
    """The distributions of a search file (YAML, read safely); every bound must make a valid config."""
    import yaml

    if not path.is_file():
        raise UserError(f"--search {path}: no such file; pass a YAML file such as: lr: {{log_uniform: [1e-4, 1e-1]}}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"--search {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--search {path} must map option names to distributions, e.g. lr: {{log_uniform: [1e-4, 1e-1]}}")
    search = {}
    for key, spec in data.items():
        name = str(key).replace("-", "_")
        search[name] = parse_distribution(path, name, spec)
        check_bounds(path, name, search[name], base)
    return search


def parse_distribution(path: Path, name: str, spec: Any) -> Any:
    """One ``name: {kind: [...]}`` entry as an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    tunable = [k for k in config_keys() if k not in UNTUNABLE]
    if name not in tunable:
        raise UserError(f"--search {path}: unknown key {name!r}; tunable keys are: {', '.join(tunable)}")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise UserError(f"--search {path}: {name} must be one of {{{': [...]}, {'.join(KINDS)}: [...]}}, "
                        f"e.g. {name}: {{choice: [a, b]}}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
        raise UserError(f"--search {path}: {name}: {kind} takes " + ("a list of values" if kind == "choice" else "[low, high]"))
    try:
        if kind == "choice":
            return CategoricalDistribution(args)
        if kind in ("int", "log_int"):
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise ValueError("bounds must be integers")
            return IntDistribution(args[0], args[1], log=kind == "log_int")
        return FloatDistribution(float(args[0]), float(args[1]), log=kind == "log_uniform")
    except (TypeError, ValueError) as exc:
        raise UserError(f"--search {path}: {name}: {kind} {args}: {exc}") from None


def check_bounds(path: Path, name: str, distribution: Any, base: Mapping[str, Any]) -> None:
    """Every choice, or both bounds, must give a valid config: fail before any trial runs."""
    values = getattr(distribution, "choices", None) or (distribution.low, distribution.high)
    for value in values:
        try:
            build_config(base, {name: value})
        except UserError as exc:
            raise UserError(f"--search {path}: {name} = {value!r} is not a valid value ({exc})") from None


# --- the study -------------------------------------------------------------------------------------


def open_study(spec: TuneSpec) -> Any:
    """Create or load the study in its shared storage: TPE, pruning, minimizing the validation loss."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says what Optuna would
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(storage=make_storage(spec), study_name=spec.study_name or spec.study_dir.resolve().name,
                               sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed), pruner=make_pruner(spec.pruner),
                               direction="minimize", load_if_exists=True)


def make_storage(spec: TuneSpec) -> Any:
    """An RDB URL (``sqlite:///study.db``, ``postgresql://...``) as given; a file path as Optuna's journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if spec.storage and "://" in spec.storage:
        return spec.storage
    path = Path(spec.storage) if spec.storage else spec.study_dir / JOURNAL_FILE
    return JournalStorage(JournalFileBackend(str(path)))


def make_pruner(name: str) -> Any:
    """Median or successive-halving pruning, decided at each validation (one step per epoch)."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)  # the first validation is the first rung
    return optuna.pruners.NopPruner()


def counted(trial: Any) -> bool:
    """Whether a trial uses the study's budget: finished, running, or failed for its own reasons.

    A trial failed because its process died or was stopped is not counted: it is re-queued and resumed.
    """
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def next_trial(study: Any, spec: TuneSpec) -> Any | None:
    """The next trial to run (a re-queued one first), or None when the study has its trials."""
    from optuna.trial import TrialState

    if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= spec.trials:
        return None
    trial = study.ask(fixed_distributions=spec.search)
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counted(t)]
    if len(earlier) >= spec.trials:  # another process asked for the last trial at the same time
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def reclaim_dead_trials(study: Any, echo: Echo) -> None:
    """Trials left running by a process of this machine that is gone: failed, and re-queued to resume."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or "pid" not in attrs or process_alive(int(attrs["pid"])):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except Exception:  # another process reclaimed it first
            continue
        requeue(study, trial.params, attrs.get("run_dir"))
        echo(f"trial {trial.number}: its process {attrs['pid']} is gone; re-queued to resume {attrs.get('run_dir')}")


def requeue(study: Any, params: Mapping[str, Any], run_dir: str | None) -> None:
    """Queue a trial with the same parameters that continues ``run_dir``."""
    study.enqueue_trial(dict(params), user_attrs={"resumes": run_dir} if run_dir else None)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- one trial -------------------------------------------------------------------------------------

NewConfig = Callable[[Mapping[str, Any], Path], Config]
ResumeConfig = Callable[[Path], Config]


def trial_config(trial: Any, spec: TuneSpec, new_config: NewConfig, resume_config: ResumeConfig) -> Config:
    """A resumed run directory for a re-queued trial that has one, else a new ``trial-NNN``."""
    resumes = trial.user_attrs.get("resumes")
    if resumes and (Path(resumes) / "config.yaml").is_file():
        return resume_config(Path(resumes))
    return new_config(trial.params, spec.study_dir / f"trial-{trial.number:03d}")


def attach_pruning(trial: Any) -> Callable[[Any], None]:
    """A ``prepare`` hook for :func:`train`: report ``val/loss`` at each validation, prune through Optuna.

    Registered on the trainer's EPOCH_COMPLETED after the epoch-end checkpoint, so a pruned trial keeps it.
    """
    from ignite.engine import Events
    from optuna_integration import PyTorchIgnitePruningHandler

    def prepare(run: Any) -> None:
        handler = PyTorchIgnitePruningHandler(trial, "loss", run.trainer)
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: handler(run.evaluator))

    return prepare


def best_val_loss(run_dir: Path) -> float | None:
    """The lowest validation loss of a run, from its newest training checkpoint (best-model bookkeeping)."""
    from ignite_app.io import checkpoint as ckpt

    for path in ckpt.train_checkpoints(run_dir):
        try:
            saved = ckpt.read_checkpoint(path)["best_checkpointer"]["_saved"]
        except (AppError, KeyError):
            continue
        return -float(saved[-1][0]) if saved else None
    return None


def run_trial(study: Any, trial: Any, spec: TuneSpec, new_config: NewConfig, resume_config: ResumeConfig,
              echo: Echo, warn: Echo) -> int:
    """Train one trial and tell the study how it ended; returns a signal's exit code, else EXIT_OK."""
    import optuna
    from optuna.trial import TrialState

    from ignite_app.train.loop import train

    try:
        cfg = trial_config(trial, spec, new_config, resume_config)
    except AppError as exc:
        return fail(study, trial, str(exc), echo)
    run_dir = Path(str(cfg.output_dir))
    for key, value in {"run_dir": str(run_dir), "host": socket.gethostname(), "pid": os.getpid()}.items():
        trial.set_user_attr(key, value)
    echo(f"trial {trial.number}: {format_params(trial.params)} -> {run_dir}")
    try:
        code = train(cfg, echo, warn, prepare=attach_pruning(trial))
    except optuna.TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        echo(f"trial {trial.number}: pruned ({exc})")
        return EXIT_OK
    except AppError as exc:
        return fail(study, trial, str(exc), echo)
    if code in (EXIT_SIGTERM, EXIT_SIGINT):  # stopped: resumable, so re-queued rather than failed for good
        study.tell(trial, state=TrialState.FAIL)
        requeue(study, trial.params, str(run_dir))
        return code
    value = best_val_loss(run_dir)
    if value is None:
        return fail(study, trial, "no validation finished", echo)
    study.tell(trial, value)
    echo(f"trial {trial.number}: val/loss {value:.4g}")
    return EXIT_OK


def fail(study: Any, trial: Any, message: str, echo: Echo) -> int:
    """A trial that failed for its own reasons (a NaN loss, a bad value): counted, not retried."""
    from optuna.trial import TrialState

    trial.set_user_attr("error", message)
    study.tell(trial, state=TrialState.FAIL)
    echo(f"trial {trial.number}: failed: {message}")
    return EXIT_OK


def format_params(params: Mapping[str, Any]) -> str:
    """``lr=0.00123 batch_size=64``."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# --- the command -----------------------------------------------------------------------------------


def tune(spec: TuneSpec, new_config: NewConfig, resume_config: ResumeConfig, echo: Echo, warn: Echo) -> int:
    """Run trials until the study holds ``spec.trials``, then print the best trial as a train command."""
    study = open_study(spec)
    reclaim_dead_trials(study, echo)
    while (trial := next_trial(study, spec)) is not None:
        code = run_trial(study, trial, spec, new_config, resume_config, echo, warn)
        if code != EXIT_OK:
            echo(f"stopped; run the same tune command again to continue the study in {spec.study_dir}")
            return code
    report(study, echo)
    return EXIT_OK


def report(study: Any, echo: Echo) -> None:
    """How many trials ended which way, and the best one as a ready ``ignite-app train`` command."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = {state.name.lower(): sum(t.state == state for t in trials if counted(t)) for state in
            (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    echo("study " + study.study_name + ": " + ", ".join(f"{n} {state}" for state, n in done.items() if n))
    if not any(t.state == TrialState.COMPLETE for t in trials):
        echo("no trial completed yet")
        return
    best = study.best_trial
    run_dir = Path(best.user_attrs["run_dir"])
    echo(f"best: trial {best.number} ({format_params(best.params)}), val/loss {best.value:.4g}, in {run_dir}")
    echo(f"train it again: ignite-app train --config {run_dir / 'config.yaml'} --output-dir runs/{run_dir.name}-best")
