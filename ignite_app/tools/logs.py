"""``ignite-app logs``: what a run's TensorBoard events, checkpoints and config say, in the terminal.

Event files are read with TensorBoard's own ``EventAccumulator`` (which also drops the steps a
resumed run purged); checkpoints only through :func:`ignite_app.io.checkpoint.read_checkpoint`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ignite_app.config import Config, names_code, top_k
from ignite_app.errors import UserError
from ignite_app.io.atomic import atomic_write_bytes
from ignite_app.io.figures import PLOT_SUFFIXES, new_figure, require_matplotlib, save_figure
from ignite_app.io.paths import run_config



@dataclass(frozen=True)
class Point:
    """One scalar value as TensorBoard stored it."""

    step: int
    value: float
    wall_time: float


@dataclass
class RunLog:
    """Everything ``logs`` reports about one run directory."""

    run_dir: Path
    cfg: Config
    scalars: dict[str, list[Point]]
    epoch_length: int | None  # trainer iterations per epoch
    iteration: int | None  # of the newest usable training checkpoint
    early_stop_epoch: int | None
    best_checkpoint: Path | None

    def epoch(self, step: int) -> float | None:
        """The (fractional) epoch at a trainer iteration."""
        return step / self.epoch_length if self.epoch_length else None


def read_scalars(run_dir: Path) -> dict[str, list[Point]]:
    """Every scalar series of the run's own event files (not its sub-runs), in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ignite_app.io.safefile import require_regular_entries

    require_regular_entries(run_dir, "tfevents", "event file")  # a FIFO would make the reader wait forever
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return {tag: [Point(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()["scalars"])}


def read_run(run_dir: Path) -> RunLog:
    """Scalars, progress, early stopping and best checkpoint of one run directory."""
    from ignite_app.io import checkpoint as ckpt

    cfg = run_config(run_dir)
    state = newest_checkpoint_state(run_dir)
    trainer = dict(state.get("trainer") or {})
    length = int(trainer["epoch_length"]) if trainer.get("epoch_length") else epoch_length_from_config(cfg)
    iteration = int(trainer["iteration"]) if "iteration" in trainer else None
    stopped = early_stop_epoch(state.get("early_stopping"), cfg.patience, iteration, length)
    return RunLog(run_dir, cfg, read_scalars(run_dir), length, iteration, stopped, ckpt.best_checkpoint(run_dir))


def newest_checkpoint_state(run_dir: Path) -> dict[str, Any]:
    """The newest training checkpoint that verifies, loaded safely; {} when there is none."""
    from ignite_app.io import checkpoint as ckpt

    for path in ckpt.train_checkpoints(run_dir):
        try:
            return ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            continue  # a damaged newest file: an older one still tells the story
    return {}


def epoch_length_from_config(cfg: Config) -> int | None:
    """Iterations per epoch of a single-process run of ``cfg`` (for runs without a checkpoint yet)."""
    from ignite_app.data.select import load_splits  # issue 13: image folders too

    if cfg.steps_per_epoch is not None:  # issue 13: a stream's epoch; a stream has no len()
        return cfg.steps_per_epoch
    if names_code(cfg.dataset) or cfg.dataset.startswith("imagefolder:"):
        return None  # never import code a run directory names, nor decode its images, just to count batches
    try:
        return math.ceil(len(load_splits(cfg).train) / cfg.batch_size)
    except UserError:  # the data moved or is gone: epochs stay unknown
        return None


def early_stop_epoch(state: Any, patience: int, iteration: int | None, length: int | None) -> int | None:
    """The epoch at which early stopping ended the run, or None if it did not."""
    if patience <= 0 or not isinstance(state, dict) or iteration is None or not length:
        return None
    return iteration // length if int(state.get("counter", 0)) >= patience else None


def best_direction(tag: str) -> str | None:
    """``min`` for losses and errors, ``max`` for accuracies; None where "best" means nothing (lr, speed)."""
    name = tag.rsplit("/", 1)[-1].lower()
    if "loss" in name or "error" in name or name in ("mae", "mse", "rmse"):
        return "min"
    if "acc" in name or name in SCORES or top_k(name) is not None:
        return "max"
    return None


SCORES = ("precision", "recall", "f1", "auroc", "r2")  # issue 12: the --metrics scores, better when higher


def last_and_best(points: list[Point], direction: str | None) -> tuple[Point, Point | None]:
    """The last point, and the best one (the earliest of equals) when the tag has a direction."""
    if direction is None:
        return points[-1], None
    pick = min if direction == "min" else max  # both return the earliest of equal values
    return points[-1], pick(points, key=lambda p: p.value)


def status_line(log: RunLog) -> str:
    """How far the run got and how it ended, in one line."""
    if log.iteration is None or not log.epoch_length:
        return f"{log.run_dir}: no checkpoint yet (the run has not finished an epoch)"
    epochs = log.iteration // log.epoch_length
    if log.early_stop_epoch is not None:
        what = "val-loss" if log.cfg.monitor == "val/loss" else log.cfg.monitor
        how = f"stopped early at epoch {log.early_stop_epoch} (no {what} improvement for {log.cfg.patience} epochs)"
    elif epochs >= log.cfg.epochs:
        how = f"completed {epochs}/{log.cfg.epochs} epochs"
    else:
        how = f"interrupted or running: {epochs}/{log.cfg.epochs} epochs saved"
    return f"{log.run_dir}: {how}; {log.iteration} iterations, {log.epoch_length} per epoch"


def best_line(log: RunLog) -> str:
    """Where the best model is, with its step, epoch and validation loss."""
    if log.best_checkpoint is None:
        return "  best checkpoint: none yet"
    step = int(log.best_checkpoint.stem.rsplit("_", 1)[-1])
    tag = log.cfg.monitor  # the metric that chose it
    value = {p.step: p.value for p in log.scalars.get(tag, [])}.get(step)
    where = f"step {step}" + (f", epoch {fmt_epoch(log.epoch(step))}" if log.epoch_length else "")
    return f"  best checkpoint: {log.best_checkpoint} ({where}" + (f", {tag} {fmt(value)})" if value is not None else ")")


def fmt(value: float) -> str:
    """A value in at most 4 significant digits, big numbers without exponent."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_epoch(epoch: float | None) -> str:
    """An epoch as ``2`` or ``1.74``; ``-`` when unknown."""
    return "-" if epoch is None else f"{epoch:.2f}".rstrip("0").rstrip(".")


def table(rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def run_table(log: RunLog) -> str:
    """Last and best value of every scalar of one run, with step and epoch."""
    rows = [["tag", "last", "step", "epoch", "best", "step", "epoch"]]
    for tag, points in log.scalars.items():
        last, best = last_and_best(points, best_direction(tag))
        row = [tag, fmt(last.value), str(last.step), fmt_epoch(log.epoch(last.step))]
        row += [fmt(best.value), str(best.step), fmt_epoch(log.epoch(best.step))] if best else ["-", "", ""]
        rows.append(row)
    return table(rows)


def comparison_table(logs: list[RunLog]) -> str:
    """Several runs side by side: per run, the last value and the best value with its epoch."""
    rows = [["tag"] + [h for i in range(len(logs)) for h in (f"[{i + 1}] last", f"[{i + 1}] best (epoch)")]]
    for tag in sorted({t for log in logs for t in log.scalars}):
        row = [tag]
        for log in logs:
            points = log.scalars.get(tag)
            if not points:
                row += ["-", "-"]
                continue
            last, best = last_and_best(points, best_direction(tag))
            row += [fmt(last.value), f"{fmt(best.value)} ({fmt_epoch(log.epoch(best.step))})" if best else "-"]
        rows.append(row)
    return table(rows)


def report(logs: list[RunLog]) -> str:
    """The text ``ignite-app logs`` prints."""
    if len(logs) == 1:
        log = logs[0]
        body = run_table(log) if log.scalars else "  no scalars logged yet"
        return "\n".join([status_line(log), best_line(log), "", body])
    heads = [f"[{i + 1}] {status_line(log)}\n    {best_line(log).strip()}" for i, log in enumerate(logs)]
    return "\n".join(heads + ["", comparison_table(logs)])


def write_csv(logs: list[RunLog], path: Path) -> int:
    """Every scalar of every run as CSV rows (run, tag, step, epoch, value, wall_time); returns the row count."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "tag", "step", "epoch", "value", "wall_time"])
    count = 0
    for log in logs:
        for tag, points in log.scalars.items():
            for p in points:
                epoch = log.epoch(p.step)
                writer.writerow([str(log.run_dir), tag, p.step, "" if epoch is None else round(epoch, 6), repr(p.value), p.wall_time])
                count += 1
    atomic_write_bytes(path, out.getvalue().encode())
    return count


def plotted_tags(logs: list[RunLog]) -> list[list[str]]:
    """Panels to draw: the losses together, then each other validation metric alone."""
    tags = sorted({t for log in logs for t in log.scalars})
    losses = [t for t in tags if "loss" in t.rsplit("/", 1)[-1]]
    metrics = [[t] for t in tags if t.startswith("val/") and t not in losses]
    return ([losses] if losses else []) + metrics


def write_plot(logs: list[RunLog], path: Path) -> None:
    """Loss and metric curves of every run against the epoch, in one image file (matplotlib, no pyplot)."""
    panels = plotted_tags(logs)
    if not panels:
        raise UserError("--plot: these runs have no loss or validation scalars yet; train for an epoch first")
    fig = new_figure("--plot", figsize=(6 * len(panels), 4), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for color, log in enumerate(logs):  # one colour per run, one line style per tag
            for style, tag in zip(("-", "--", ":", "-."), panel):
                points = log.scalars.get(tag, [])
                x = [log.epoch(p.step) or p.step for p in points]
                ax.plot(x, [p.value for p in points], f"C{color % 10}{style}", marker="o" if len(points) < 30 else None,
                        markersize=3, label=_label(logs, log, tag))
        ax.set_xlabel("epoch" if all(log.epoch_length for log in logs) else "iteration")
        ax.set_title(" / ".join(panel))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)


def _label(logs: list[RunLog], log: RunLog, tag: str) -> str:
    return tag if len(logs) == 1 else f"{log.run_dir.name}: {tag}"


def show_logs(run_dirs: list[Path], csv_path: Path | None, plot_path: Path | None, echo: Callable[[str], None]) -> int:
    """``ignite-app logs``: print the summary, and write the CSV and the plot when asked."""
    from ignite_app.io.paths import expand_runs, output_file

    if csv_path is not None:
        output_file(csv_path, "--csv", (".csv",))
    if plot_path is not None:
        output_file(plot_path, "--plot", PLOT_SUFFIXES)
        require_matplotlib("--plot")
    logs = [read_run(d) for d in expand_runs(run_dirs)]
    echo(report(logs))
    if csv_path is not None:
        echo(f"wrote {write_csv(logs, csv_path)} scalar values to {csv_path}")
    if plot_path is not None:
        write_plot(logs, plot_path)
        echo(f"wrote the curves to {plot_path}")
    return 0
