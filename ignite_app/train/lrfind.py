"""``ignite-app lr-find``: Ignite's ``FastaiLRFinder`` on the configured model and data.

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``num_iter`` training
iterations (stopping early once the loss diverges); the suggestion is the rate where the smoothed
loss falls fastest. Nothing is written but the plot.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ignite.handlers import FastaiLRFinder

from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.io.figures import PLOT_SUFFIXES, new_figure, require_matplotlib, save_figure
from ignite_app.io.paths import output_file
from ignite_app.train.build import build_pipeline, pick_device



@dataclass(frozen=True)
class LRSweep:
    """The learning rates tried, the smoothed loss at each, and Ignite's suggestion."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    diverged: bool


def check_sweep(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Refuse a sweep that cannot produce a suggestion."""
    if not start_lr > 0:
        raise UserError(f"invalid --start-lr {start_lr}: expected a number > 0")
    if not end_lr > start_lr:
        raise UserError(f"invalid --end-lr {end_lr}: expected a number above --start-lr {start_lr}")
    if num_iter < 3:
        raise UserError(f"invalid --num-iter {num_iter}: expected an integer >= 3 (the suggestion needs a curve)")


def sweep(cfg: Config, start_lr: float, end_lr: float, num_iter: int) -> LRSweep:
    """Train ``cfg``'s model on ``cfg``'s data while the learning rate grows; nothing is saved.

    The model, data and step are built by :func:`~ignite_app.train.build.build_pipeline`, as for ``train``,
    so every option that changes them applies here too; only ``--cuda-graph`` is dropped (the sweep runs eagerly).
    """
    cfg = cfg.replace(cuda_graph=False)
    pipe = build_pipeline(cfg, pick_device(cfg))
    finder = FastaiLRFinder()
    with finder.attach(pipe.trainer, {"model": pipe.raw_model, "optimizer": pipe.optimizer}, num_iter=num_iter,
                       start_lr=float(start_lr), end_lr=float(end_lr)) as finding:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Run completed without loss diverging")  # we say it ourselves
            finding.run(pipe.train_loader, max_epochs=1, epoch_length=pipe.epoch_length)
    results = finder.get_results()
    try:
        suggestion = float(finder.lr_suggestion())
    except RuntimeError:
        raise UserError(
            f"the loss hardly fell between --start-lr {start_lr:g} and lr {results['lr'][-1]:.3g}, so there is no "
            "suggestion; lower --start-lr (or raise --num-iter for a finer sweep)"
        ) from None
    # Ignite 0.5.5 records one point past num_iter (beyond end_lr) before it stops: leave it out.
    lrs, losses = [float(v) for v in results["lr"][:num_iter]], [float(v) for v in results["loss"][:num_iter]]
    return LRSweep(lrs, losses, suggestion, diverged=len(results["lr"]) < num_iter)


def write_plot(result: LRSweep, path: Path) -> None:
    """The loss against the learning rate (log scale) with the suggestion marked."""
    fig = new_figure("lr-find", figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses)
    ax.scatter([result.suggestion], [result.losses[result.lrs.index(result.suggestion)]], color="red", zorder=3,
               label=f"suggested lr {result.suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def lr_find(cfg: Config, start_lr: float, end_lr: float, num_iter: int, plot: Path, echo: Callable[[str], None]) -> int:
    """``ignite-app lr-find``: run the sweep, print the suggestion, save the plot."""
    check_sweep(start_lr, end_lr, num_iter)
    output_file(plot, "--plot", PLOT_SUFFIXES)
    require_matplotlib("lr-find")
    result = sweep(cfg, start_lr, end_lr, num_iter)
    write_plot(result, plot)
    ended = "where the loss diverged" if result.diverged else f"in {num_iter} iterations; the loss did not diverge"
    echo(f"tried learning rates from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g} ({ended})")
    echo(f"suggested learning rate: {result.suggestion:.3g}")
    echo(f"wrote the loss curve to {plot}; train with: ignite-app train --lr {result.suggestion:.3g}")
    return 0
