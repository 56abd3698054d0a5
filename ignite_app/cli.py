"""The ``ignite-app`` command line. Imports nothing heavy until a command runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ignite_app import __version__
from ignite_app.config import (
    AMP_MODES, COMPILE_MODES, BACKENDS, LR_SCHEDULES, OPTIMIZERS, RESUME_FIXED_KEYS, TASKS, Config, build_config,
    default_of, default_output_dir, load_yaml, parse_duration,
)
from ignite_app.errors import AppError, UserError


def default_hint(key: str) -> str:
    """`` [default: VALUE]`` for an option's help text, from the Config's default."""
    return f" [default: {default_of(key)}]"


TRAIN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with the same keys as these options; flags override it."),
    click.option("--device", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps." + default_hint("device")),
    click.option("--dataset", help="digits, synthetic-regression, csv:PATH, npz:PATH (arrays x, y) or package.module:NAME (called with train=True/False)." + default_hint("dataset")),
    click.option("--target", help="CSV target column, by name or index. [default: last column]"),
    click.option("--task", type=click.Choice(TASKS), help="Force classification or regression." + default_hint("task")),
    click.option("--model", help="mlp, cnn, or package.module:ClassName (built with no arguments). [default: cnn for images, else mlp]"),
    click.option("--epochs", type=int, help="Maximum number of epochs." + default_hint("epochs")),
    click.option("--batch-size", type=int, help="Batch size per process (global batch = this x processes)." + default_hint("batch_size")),
    click.option("--lr", type=float, help="Learning rate." + default_hint("lr")),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Optimizer." + default_hint("optimizer")),
    click.option("--weight-decay", type=float, help="Weight decay." + default_hint("weight_decay")),
    click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), help="Learning-rate schedule over the run." + default_hint("lr_schedule")),
    click.option("--seed", type=int, help="Seed for initialisation, shuffling and dropout." + default_hint("seed")),
    click.option("--patience", type=int, help="Early stopping: epochs without val-loss improvement; 0 turns it off." + default_hint("patience")),
    click.option("--num-workers", type=int, help="DataLoader worker processes." + default_hint("num_workers")),
    click.option("--n-saved", type=int, help="How many training checkpoints to keep." + default_hint("n_saved")),
    click.option("--output-dir", help="Run directory. [default: runs/<dataset>-<timestamp>]"),
    click.option("--resume", type=click.Path(), help="Continue a run: its directory (newest valid checkpoint) or a checkpoint file."),
    click.option("--progress/--no-progress", default=None, help="Progress bar on stderr. [default: when stderr is a terminal]"),
    click.option("--log-every", type=int, help="Log the training loss to TensorBoard every N iterations." + default_hint("log_every")),
    click.option("--amp", type=click.Choice(AMP_MODES), help="Mixed precision (bf16 or fp16 autocast; fp16 adds a GradScaler)." + default_hint("amp")),
    click.option("--channels-last/--no-channels-last", default=None, help="channels_last memory format for image models."),
    click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model."),
    click.option("--compile-mode", type=click.Choice(COMPILE_MODES), help="torch.compile mode; reduce-overhead replays CUDA graphs, for small models on GPUs." + default_hint("compile_mode")),
    click.option("--cuda-graph/--no-cuda-graph", default=None, help="Replay each training step as one CUDA graph (small models on GPUs). [default: on for one CUDA process where the options allow; a step that cannot be recorded runs eagerly]"),
    click.option("--grad-accum", type=int, help="Accumulate gradients over N batches per optimizer step." + default_hint("grad_accum")),
    click.option("--clip-grad-norm", type=float, help="Clip the global gradient norm to this value (after unscaling)."),
    click.option("--deterministic/--no-deterministic", default=None, help="Deterministic kernels (slower on GPU; CPU runs are exact anyway)."),
    click.option("--time-limit", help="Stop cleanly with a resumable checkpoint after this wall time, e.g. 3h30m."),
    click.option("--in-memory/--no-in-memory", default=None, help="Batch tensor datasets straight from memory instead of a DataLoader. [default: on]"),
    click.option("--backend", type=click.Choice(BACKENDS), help="torch.distributed backend under torchrun. [default: nccl on CUDA, else gloo]"),
    # issue 16: CPU threads
    click.option("--threads", type=int, help="torch CPU threads, DataLoader workers too. [default: torch's choice, at most the CPUs this process may use]"),
]


def train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Apply every training option to a click command."""
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def _one_line(exc: click.UsageError) -> click.UsageError:
    """The same usage error without click's usage banner: one ``Error:`` line, like every other user error."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # bare ``ignite-app``: show the help, as click does
    return click.UsageError(f"{exc.format_message()} See --help.", ctx=None)


class OneLineCommand(click.Command):
    """A click command whose bad options and values are reported in one line (exit code 2)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None


class OneLineGroup(click.Group):
    """A click group whose usage errors, and those of its subcommands, are one line."""

    command_class = OneLineCommand

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc) from None


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ignite-app")
def main() -> None:
    """Train supervised PyTorch models on pytorch-ignite, and look at the runs."""


@click.command("train", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@train_options
@click.pass_context
def train_command(ctx: click.Context, config_file: str | None, compile_: bool | None, **flags: Any) -> None:
    """Train a model; leaves config.yaml, checkpoints/ and TensorBoard logs in the run directory."""
    flags["compile"] = compile_
    explicit = {k: v for k, v in flags.items() if v is not None}
    code = guarded(lambda: _train(config_file, explicit))
    sys.exit(code)


main.add_command(train_command)


def guarded(action: Callable[[], int]) -> int:
    """Run ``action``; user errors become one line on stderr and their exit code, never a traceback."""
    try:
        return action()
    except AppError as exc:
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code


def _train(config_file: str | None, flags: dict[str, Any]) -> int:
    # Ignite logs every exception it re-raises; we report errors ourselves, in one line.
    logging.getLogger("ignite").setLevel(logging.CRITICAL)
    from ignite_app.fastimport import import_ignite

    import_ignite()  # first: without FSDP/DTensor and boto3, ~0.8 s and ~60 MB less at start-up
    from ignite_app.train.launch import launch  # heavy imports only once we really train

    # Under torchrun every process resolves the flags, but only rank 0 claims the output directory.
    return launch(lambda: resolve_train_config(config_file, flags, claim=False), claim_output_dir)


def resolve_train_config(config_file: str | None, flags: dict[str, Any], claim: bool = True) -> Config:
    """Config from (the resumed run's config.yaml), the --config file and the flags, in that order.

    With ``claim``, a new run's output directory is chosen and checked too (:func:`claim_output_dir`).
    """
    file_values = load_yaml(config_file) if config_file else {}
    if isinstance(flags.get("time_limit"), str):
        flags["time_limit"] = parse_duration(flags["time_limit"])
    resume = flags.get("resume") or file_values.get("resume")
    if resume:
        return _resume_config(Path(resume), file_values, flags)
    cfg = build_config(file_values, flags)
    return claim_output_dir(cfg) if claim else cfg


def claim_output_dir(cfg: Config) -> Config:
    """A new run's directory: --output-dir or a free runs/<dataset>-<timestamp>; refused if it holds files."""
    if cfg.resume:
        return cfg  # a resumed run continues in its own directory
    out = cfg.output_dir or _free_default_dir(cfg.dataset)
    _refuse_existing_run(Path(out))
    return cfg.replace(output_dir=out)


def run_dir_of(resume: Path) -> Path:
    """The run directory that a --resume path points into."""
    if not resume.exists():
        raise UserError(f"--resume {resume}: no such file or directory")
    if resume.is_dir():
        run_dir = resume
    elif resume.parent.name == "checkpoints":
        run_dir = resume.parent.parent
    else:
        raise UserError(f"--resume {resume}: a checkpoint file must sit in a run's checkpoints/ folder; pass the run directory")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--resume {resume}: {run_dir} holds no config.yaml, so it is not a run directory of ignite-app")
    return run_dir


def _resume_config(resume: Path, file_values: dict[str, Any], flags: dict[str, Any]) -> Config:
    run_dir = run_dir_of(resume)
    saved = load_yaml(run_dir / "config.yaml")
    saved_cfg = build_config(saved, {})
    asked = {**file_values, **flags}
    out = asked.get("output_dir")
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise UserError(f"--output-dir {out} conflicts with --resume {resume}: a resumed run continues in {run_dir}")
    cfg = build_config(saved, {**asked, "output_dir": str(run_dir), "resume": str(resume)})
    # batch_size may change with the number of processes; train.resume.check_global_batch compares the global batch.
    changed = [k for k in RESUME_FIXED_KEYS if k != "batch_size" and getattr(cfg, k) != getattr(saved_cfg, k)]
    if changed:
        key = changed[0]
        raise UserError(
            f"--{key.replace('_', '-')} cannot change when resuming (run has {getattr(saved_cfg, key)!r}, "
            f"asked {getattr(cfg, key)!r}); start a new run with --output-dir instead"
        )
    return cfg


def _free_default_dir(dataset: str) -> str:
    base = default_output_dir(dataset)
    candidate, n = base, 1
    while Path(candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _refuse_existing_run(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"{out} already holds files; continue that run with --resume {out}, "
            "or choose another --output-dir"
        )


# Looking at runs and using their checkpoints. Each command imports its module (and torch) only when it runs.


def _quiet_ignite() -> None:
    logging.getLogger("ignite").setLevel(logging.CRITICAL)  # we report errors ourselves, in one line


def _inference_start(checkpoint: Path) -> None:
    """Issue 16: a missing path or a folder that is no run fails at once; then ignite is imported as ``train``
    does, without FSDP/DTensor and boto3 (~1 s less), before anything else imports it."""
    from ignite_app.io.paths import require_run_dir, resolve_checkpoint

    if not checkpoint.exists():
        resolve_checkpoint(checkpoint)  # raises its one-line error; imports nothing
    if checkpoint.is_dir():
        require_run_dir(checkpoint)
    from ignite_app.fastimport import import_ignite

    import_ignite()


@main.command("logs")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write every scalar of every run to this CSV file.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Also draw the loss and validation curves into this .png, .svg or .pdf (needs matplotlib).")
def logs_command(run_dirs: tuple[Path, ...], csv_path: Path | None, plot_path: Path | None) -> None:
    """Summarise runs: last and best value of every TensorBoard scalar, early stopping, best checkpoint.

    Several runs (or a folder of runs, such as runs/) are compared side by side.
    """

    def action() -> int:
        from ignite_app.tools.logs import show_logs

        return show_logs(list(run_dirs), csv_path, plot_path, click.echo)

    sys.exit(guarded(action))


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", help="Evaluate on this dataset instead of the run's (same forms as train --dataset).")
@click.option("--target", help="CSV target column of --dataset, by name or index. [default: last column]")
@click.option("--split", type=click.Choice(("val", "train")), default="val", show_default=True,
              help="Which part of the fixed 80/20 split.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric name to value, nothing else.")
@click.option("--batch-size", type=int, help="Samples per batch. [default: up to 4096, as memory allows]")  # issue 16
def evaluate_command(checkpoint: Path, dataset: str | None, target: str | None, split: str, device: str, as_json: bool,
                     batch_size: int | None) -> None:
    """Evaluate CHECKPOINT with the run's metrics and print them.

    CHECKPOINT is a checkpoint_*.pt or best_model_*.pt in a run's checkpoints/ folder, or a run
    directory (its best model). The model is rebuilt from the run's config.yaml.
    """

    def action() -> int:
        import json

        from ignite_app.io.paths import resolve_checkpoint

        _inference_start(checkpoint)
        resolve_checkpoint(checkpoint)  # a wrong path fails before torch is imported
        from ignite_app.tools.inference import evaluate, format_evaluation

        _quiet_ignite()
        result = evaluate(checkpoint, dataset, target, split, device, batch_size)
        click.echo(json.dumps(result.metrics) if as_json else format_evaluation(result))
        return 0

    sys.exit(guarded(action))


@main.command("predict")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="CSV or NPZ (array x) of inputs. A CSV holds the training feature columns in training order, "
                   "with or without a header; if it has one column more, that extra target column is dropped "
                   "(--target, else the run's --target, else the last column).")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="CSV (label, prob_0, ... or output_0, ...) or NPZ (labels and probabilities, or outputs).")
@click.option("--target", help="The column to drop from a CSV --input that has one column more than the features.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=int, help="Samples per batch. [default: up to 4096, as memory allows]")  # issue 16
def predict_command(checkpoint: Path, input_path: Path, output_path: Path, target: str | None, device: str,
                    batch_size: int | None) -> None:
    """Predict with CHECKPOINT (a checkpoint file or a run directory): class probabilities and labels, or regression outputs."""

    def action() -> int:
        from ignite_app.io.paths import resolve_checkpoint

        _inference_start(checkpoint)
        resolve_checkpoint(checkpoint)  # a wrong path fails before torch is imported
        from ignite_app.tools.inference import predict

        count = predict(checkpoint, input_path, output_path, target, device, batch_size)
        click.echo(f"wrote {count} predictions to {output_path}")
        return 0

    sys.exit(guarded(action))


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="safetensors", show_default=True,
              help="safetensors (weights only: no code, safe to share), torchscript or onnx.")
@click.option("--output", type=click.Path(path_type=Path),
              help="File to write: .safetensors, .pt/.pth/.ts (torchscript) or .onnx. [default: <checkpoint name>.safetensors, .torchscript.pt or .onnx here]")
def export_command(checkpoint: Path, fmt: str, output: Path | None) -> None:
    """Export the model of CHECKPOINT (a checkpoint file or a run directory)."""

    def action() -> int:
        from ignite_app.tools.export import export

        click.echo(f"wrote {export(checkpoint, fmt, output)}")
        return 0

    sys.exit(guarded(action))


@main.command("lr-find")
@train_options
@click.option("--start-lr", type=float, default=1e-7, show_default=True, help="Lowest learning rate tried.")
@click.option("--end-lr", type=float, default=10.0, show_default=True, help="Highest learning rate tried.")
@click.option("--num-iter", type=int, default=100, show_default=True, help="Training iterations of the sweep.")
@click.option("--plot", type=click.Path(path_type=Path), default=Path("lr_find.png"), show_default=True,
              help="Where to save the loss-vs-learning-rate curve (.png, .svg or .pdf).")
def lr_find_command(config_file: str | None, compile_: bool | None, start_lr: float, end_lr: float, num_iter: int,
                    plot: Path, **flags: Any) -> None:
    """Sweep the learning rate on the configured model and data (Ignite's FastaiLRFinder) and suggest one.

    Takes the same options and --config file as train; writes nothing but the plot.
    """

    def action() -> int:
        from ignite_app.train.lrfind import lr_find

        _quiet_ignite()
        values = {k: v for k, v in {**flags, "compile": compile_}.items() if v is not None}
        file_values = load_yaml(config_file) if config_file else {}
        if values.get("resume") or file_values.get("resume"):
            raise UserError("lr-find always starts from fresh weights; drop --resume")
        return lr_find(build_config(file_values, values), start_lr, end_lr, num_iter, plot, click.echo)

    sys.exit(guarded(action))


if __name__ == "__main__":  # pragma: no cover
    main()
