"""Trackers besides TensorBoard: MLflow through Ignite's ``MLflowLogger`` (the extra ``ignite_app[mlflow]``).

The same scalars as TensorBoard (``train/loss``, ``train/lr/group_N``, ``val/*``, one x-axis: the trainer's
iteration), the config as params, the final metrics and the best checkpoint as an artifact. The MLflow run id
is kept in the run directory, so a resumed run continues the same MLflow run. A store that cannot be reached
at the start is a :class:`UserError`; one that fails later only warns: training and checkpoints go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine
from ignite.handlers.mlflow_logger import MLflowLogger, OptimizerParamsHandler, OutputHandler

from ignite_app.config import Config, tracker_names
from ignite_app.errors import UserError
from ignite_app.io.atomic import atomic_write_bytes

RUN_ID_FILE = "mlflow_run_id"  # in the run directory: the MLflow run that a resume continues
DEFAULT_DB = "mlflow.db"  # the default store, beside the run directory: every run of a folder in one store
ARTIFACT_DIR = "mlartifacts"  # the default store's artifacts, beside it
Warn = Callable[[str], None]


def import_mlflow() -> Any:
    """The mlflow module, or one line that names the extra to install."""
    try:
        import mlflow
    except ImportError:
        raise UserError('--tracker mlflow needs the mlflow extra: pip install "ignite_app[mlflow]" '
                        "(or drop mlflow from --tracker)") from None
    return mlflow


def tracking_uri(cfg: Config, run_dir: Path) -> str:
    """``--mlflow-uri``, else a SQLite store beside the run directory (no server needed)."""
    return cfg.mlflow_uri or f"sqlite:///{run_dir.resolve().parent / DEFAULT_DB}"


class SafeMLflowLogger(MLflowLogger):
    """Ignite's MLflowLogger made safe for training: a failed write warns once, then the tracker is off.

    It writes through the client with an explicit run id (no process-wide active run), names metrics
    like TensorBoard (``train/loss``, not Ignite's ``train loss``) and skips the (metric, step) pairs
    the MLflow run already holds, so a resumed run adds no duplicated steps.
    """

    def __init__(self, run_id: str, warn: Warn, logged_upto: Mapping[str, int] | None = None) -> None:
        # Not MLflowLogger.__init__: it would start a second run through mlflow's global active-run state.
        self.run_id, self.warn = run_id, warn
        self.logged_upto = dict(logged_upto or {})
        self.failed = False

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step``; names with spaces (Ignite's joined tags) take TensorBoard's slashes."""
        named = {k.replace(" ", "/"): float(v) for k, v in metrics.items()}
        fresh = {k: v for k, v in named.items() if step > self.logged_upto.get(k, -1)}
        if fresh:
            self.guarded(lambda mlflow: mlflow.log_metrics(fresh, step=step, run_id=self.run_id))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters (once, when the MLflow run is created: MLflow params cannot change)."""
        self.guarded(lambda mlflow: mlflow.log_params(dict(params), run_id=self.run_id))

    def log_artifact(self, path: Path, folder: str) -> None:
        """Upload one file into the run's artifacts under ``folder``."""
        self.guarded(lambda mlflow: mlflow.MlflowClient().log_artifact(self.run_id, str(path), folder))

    def guarded(self, action: Callable[[Any], Any]) -> None:
        """Run ``action(mlflow)``; a failure warns once and turns the tracker off, never ending training."""
        if self.failed:
            return
        try:
            action(import_mlflow())
        except Exception as exc:  # any store error: a lost tracker must not cost the training run
            self.failed = True
            self.warn(f"warning: MLflow logging failed and is off for the rest of this run "
                      f"({type(exc).__name__}: {first_line(exc)}); training and checkpoints go on")

    def close(self) -> None:
        """Mark the MLflow run finished (a resume reopens it)."""
        self.guarded(lambda mlflow: mlflow.MlflowClient().set_terminated(self.run_id))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, shortened: for one-line warnings and errors."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def start_mlflow(cfg: Config, run_dir: Path, warn: Warn) -> SafeMLflowLogger:
    """Open (or, with a run id in ``run_dir``, reopen) the run's MLflow run; unreachable store: UserError."""
    mlflow = import_mlflow()
    for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, ...) would mix with the epoch lines
        logging.getLogger(name).setLevel(logging.WARNING)
    # A store that is down should fail in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = tracking_uri(cfg, run_dir)
    id_file = run_dir / RUN_ID_FILE
    saved_id = id_file.read_text().strip() if id_file.is_file() else None
    try:
        mlflow.set_tracking_uri(uri)
        run_id, logged = reopen_run(mlflow, saved_id) if saved_id else (create_run(mlflow, cfg, run_dir), {})
    except Exception as exc:
        raise UserError(f"--mlflow-uri {uri}: cannot open the MLflow run ({type(exc).__name__}: {first_line(exc)}); "
                        "start the tracking server, pass another --mlflow-uri, or drop mlflow from --tracker") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(id_file, run_id.encode())
    logger = SafeMLflowLogger(run_id, warn, logged)
    if saved_id is None:
        logger.log_params(loggable_params(cfg))
    return logger


def create_run(mlflow: Any, cfg: Config, run_dir: Path) -> str:
    """A new MLflow run named after the run directory, in the experiment named after its folder."""
    # The default store keeps its artifacts beside it, not in MLflow's default ./mlruns of the working directory.
    artifact_root = None if cfg.mlflow_uri else run_dir.resolve().parent / ARTIFACT_DIR
    experiment = get_or_create_experiment(mlflow, run_dir.resolve().parent.name or "runs", artifact_root)
    return mlflow.MlflowClient().create_run(experiment, run_name=run_dir.name).info.run_id


def reopen_run(mlflow: Any, run_id: str) -> tuple[str, dict[str, int]]:
    """The saved MLflow run, running again, and the last step of each of its metrics."""
    logged = logged_steps(mlflow, run_id)
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    return run_id, logged


def get_or_create_experiment(mlflow: Any, name: str, artifact_root: Path | None) -> str:
    """The id of the experiment ``name``, created with its artifacts under ``artifact_root`` (else the store's default)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def logged_steps(mlflow: Any, run_id: str) -> dict[str, int]:
    """The last step of every metric the MLflow run holds; raises if the run is not in this store."""
    client = mlflow.MlflowClient()
    keys = client.get_run(run_id).data.metrics.keys()
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


def loggable_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params (strings; the run-local keys left out)."""
    return {k: str(v) for k, v in cfg.to_dict().items() if k not in ("output_dir", "progress")}


def attach_mlflow(logger: SafeMLflowLogger, trainer: Engine, evaluator: Engine, optimizer: torch.optim.Optimizer,
                  cfg: Config) -> None:
    """The TensorBoard scalars, through Ignite's MLflow handlers, at the same events and steps."""
    every = Events.ITERATION_COMPLETED(every=cfg.log_every)
    logger.attach(trainer, OutputHandler(tag="train", output_transform=lambda loss: {"loss": float(loss)}), every)
    logger.attach(trainer, OptimizerParamsHandler(optimizer, param_name="lr", tag="train"), every)
    step = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    logger.attach(evaluator, OutputHandler(tag="val", metric_names="all", global_step_transform=step), Events.COMPLETED)


class Trackers:
    """The run's trackers besides TensorBoard (MLflow for now); all calls are safe when there are none."""

    def __init__(self, mlflow: SafeMLflowLogger | None = None) -> None:
        self.mlflow = mlflow

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        """The final metrics of the run as ``final/<name>`` at the last step."""
        if self.mlflow is not None:
            self.mlflow.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step)

    def close(self, best_model: Path | None) -> None:
        """Upload the best checkpoint (once every write is on disk), then end the tracker runs."""
        if self.mlflow is None:
            return
        if best_model is not None:
            self.mlflow.log_artifact(best_model, "checkpoints")
        self.mlflow.close()


def start_trackers(cfg: Config, run_dir: Path, trainer: Engine, evaluator: Engine, optimizer: torch.optim.Optimizer,
                   warn: Warn) -> Trackers:
    """Open the trackers ``--tracker`` names besides TensorBoard and attach their handlers (rank 0 only)."""
    if "mlflow" not in tracker_names(cfg.tracker):
        return Trackers()
    logger = start_mlflow(cfg, run_dir, warn)
    attach_mlflow(logger, trainer, evaluator, optimizer, cfg)
    return Trackers(logger)
