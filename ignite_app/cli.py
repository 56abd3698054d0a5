"""The ``ignite-app`` command line. Imports nothing heavy until a command runs."""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import click

from ignite_app import __version__
from ignite_app.config import (
    AMP_MODES, COMPILE_MODES, BACKENDS, LR_SCHEDULES, MONITOR_MODES, NA_POLICIES, OPTIMIZERS, REQUEUE_SIGNALS,
    TASKS, Config, build_config, changed_fixed_key, default_of, default_output_dir, file_dataset, load_yaml, parse_model_args,
)
from ignite_app.errors import AppError, UserError


OVERWRITE_HELP = "Replace output files that already exist."
TRUST_HELP = "Import the code that the run directory's config.yaml names (model:/dataset: package.module:NAME)."


def default_hint(key: str) -> str:
    """`` [default: VALUE]`` for an option's help text, from the Config's default."""
    return f" [default: {default_of(key)}]"


TRAIN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with the same keys as these options; flags override it."),
    click.option("--device", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps." + default_hint("device")),
    click.option("--dataset", help="digits, synthetic-regression, csv:PATH, npz:PATH (arrays x, y), npy:DIR (DIR/x.npy, DIR/y.npy, memory-mapped), imagefolder:PATH or package.module:NAME (called with train=True/False)." + default_hint("dataset")),
    click.option("--target", help="CSV target column, by name or index. [default: last column]"),
    click.option("--task", type=click.Choice(TASKS), help="Force classification or regression." + default_hint("task")),
    click.option("--model", help="mlp, cnn, or package.module:NAME (a class or a function returning an nn.Module; arguments via --model-arg). [default: cnn for images, else mlp]"),
    click.option("--epochs", type=int, help="Maximum number of epochs." + default_hint("epochs")),
    click.option("--batch-size", type=int, help="Batch size per process (global batch = this x processes)." + default_hint("batch_size")),
    click.option("--lr", type=float, help="Learning rate." + default_hint("lr")),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Optimizer." + default_hint("optimizer")),
    click.option("--weight-decay", type=float, help="Weight decay." + default_hint("weight_decay")),
    click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), help="Learning-rate schedule over the run." + default_hint("lr_schedule")),
    click.option("--seed", type=int, help="Seed for initialisation, shuffling and dropout." + default_hint("seed")),
    click.option("--patience", type=int, help="Early stopping: epochs without improvement of --monitor; 0 turns it off." + default_hint("patience")),
    click.option("--num-workers", type=int, help="DataLoader worker processes." + default_hint("num_workers")),
    click.option("--n-saved", type=int, help="How many training checkpoints to keep." + default_hint("n_saved")),
    click.option("--output-dir", help="Run directory. [default: runs/<dataset>-<timestamp>]"),
    click.option("--resume", type=click.Path(), help="Continue a run: its directory (newest valid checkpoint) or a checkpoint file; "
                                                          "auto: the run in --output-dir if it holds one, else start it there."),
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
    # issue 14: trackers besides TensorBoard
    click.option("--tracker", help="Trackers, comma-separated: tensorboard (always on), mlflow (needs ignite_app[mlflow])." + default_hint("tracker")),
    click.option("--mlflow-uri", help="MLflow tracking URI. [default: sqlite:///<folder holding the run directory>/mlflow.db]"),
    # issue 17: preemption
    click.option("--requeue-signal", type=click.Choice(REQUEUE_SIGNALS),
                 help="On this signal save at the next iteration and exit; under SLURM (sbatch --signal=USR1@90 --requeue) "
                      "also requeue the job. Pair it with --resume auto."),
    # issue 13: image folders, augmentation on the device, data larger than memory
    click.option("--image-size", type=int, help="imagefolder: resize the shorter side to N and center-crop to NxN. [default: the first image's shorter side]"),
    click.option("--cache-dir", help="imagefolder: folder of the decoded uint8 cache. [default: PATH/.ignite_app_cache]"),
    click.option("--strict/--no-strict", default=None, help="imagefolder: stop (exit 2) at an unreadable image instead of skipping it."),
    click.option("--augment", help="imagefolder: off, on (crop,flip) or a comma list of crop, flip, resized-crop; runs on the training device." + default_hint("augment")),
    click.option("--input-key", help="package.module:NAME datasets of dict items: the input's key. [default: x, input, image, pixel_values, ...]"),
    click.option("--target-key", help="package.module:NAME datasets of dict items: the target's key. [default: y, label, labels, target, ...]"),
    click.option("--steps-per-epoch", type=int, help="Batches per epoch of an IterableDataset (package.module:NAME returning one)."),
    click.option("--memory-budget-mb", type=int, help="Array data larger than this is streamed from its file batch by batch. [default: a quarter of the available memory]"),
    # issue 11: tabular data
    click.option("--val-fraction", type=float, help="Share of the rows held out for validation (stratified by class, fixed seed)." + default_hint("val_fraction")),
    click.option("--val-dataset", help="Validate on this file (csv:PATH, npz:PATH or a .csv/.npz path) instead of a share of --dataset."),
    click.option("--test-dataset", help="Also report the best model's metrics on this file (csv:PATH, npz:PATH or a path) at the end."),
    click.option("--standardize/--no-standardize", default=None, help="Standardise numeric features and regression targets with training statistics. [default: on]"),
    click.option("--na", type=click.Choice(NA_POLICIES), help="Missing cells: impute (training median, most frequent word), drop the rows, or error." + default_hint("na")),
    click.option("--encoding", help="Text encoding of CSV files. [default: UTF-8 (with or without BOM), else Latin-1]"),
    # issue 12: model arguments, metrics and the monitor
    click.option("--model-arg", "model_arg", multiple=True, metavar="NAME=VALUE",
                 help="An argument of --model (repeatable); VALUE is read as YAML: 128, 0.1, true, [64,32], resnet18."),
    click.option("--metrics", help="Validation metrics, comma-separated: accuracy, precision, recall, f1 (macro), topK (e.g. top5), "
                                   "auroc (2 classes), confusion_matrix; mae, mse, rmse, r2. [default: accuracy, or mae]"),
    click.option("--monitor", help="The validation metric that drives early stopping, the best checkpoint and plateau, "
                                   "as val/NAME." + default_hint("monitor")),
    click.option("--mode", type=click.Choice(MONITOR_MODES), help="Whether the monitor is better lower or higher. "
                                                                   "[default: max for scores, min for loss and errors]"),
    click.option("--warmup-epochs", type=int, help="Linear warmup to --lr over this many epochs (from lr/iterations), before the schedule."),
    click.option("--warmup-steps", type=int, help="Linear warmup over this many iterations (instead of --warmup-epochs)."),
    click.option("--plateau-patience", type=int, help="--lr-schedule plateau: validations without improvement of --monitor "
                                                      "before the lr drops." + default_hint("plateau_patience")),
    click.option("--plateau-factor", type=float, help="--lr-schedule plateau: the lr is multiplied by this." + default_hint("plateau_factor")),
    click.option("--ema-decay", type=float, help="Keep an exponential moving average of the weights (e.g. 0.999); "
                                                 "validation, the best model, evaluate, predict and export use it."),
    click.option("--class-weights", type=click.Choice(("auto", "none")), help="auto: weight the training loss by inverse "
                 "class frequency in the training split (recorded in config.yaml)." + default_hint("class_weights")),
    click.option("--balanced-sampler/--no-balanced-sampler", default=None,
                 help="Draw training batches so that every class is equally likely (with replacement)."),
    click.option("--init-weights", type=click.Path(dir_okay=False), help="Start from these weights where names and shapes "
                 "match (fine-tuning): a .safetensors file or a checkpoint of this tool."),
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
@click.option("--trust-config", is_flag=True, default=None, help=TRUST_HELP)  # issue 15
@click.pass_context
def train_command(ctx: click.Context, config_file: str | None, compile_: bool | None, **flags: Any) -> None:
    """Train a model; leaves config.yaml, checkpoints/ and TensorBoard logs in the run directory."""
    flags["compile"] = compile_
    model_arg = flags.pop("model_arg")
    explicit = {k: v for k, v in flags.items() if v is not None}
    code = guarded(lambda: _train(config_file, {**explicit, **model_arg_flags(model_arg)}))
    sys.exit(code)


main.add_command(train_command)


def model_arg_flags(texts: tuple[str, ...]) -> dict[str, Any]:
    """``{"model_args": {...}}`` for the --model-arg flags given, else nothing."""
    return {"model_args": parse_model_args(texts)} if texts else {}


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

    # Under torchrun every process resolves the flags, but only rank 0 claims (and locks) the output directory.
    with ExitStack() as held:
        return launch(lambda: resolve_train_config(config_file, flags, claim=False), lambda cfg: claim_output_dir(cfg, held))


def resolve_train_config(config_file: str | None, flags: dict[str, Any], claim: bool = True) -> Config:
    """Config from (the resumed run's config.yaml), the --config file and the flags, in that order.

    With ``claim``, a new run's output directory is chosen and checked too (:func:`claim_output_dir`).
    """
    trusted = bool(flags.get("trust_config"))
    flags = {k: v for k, v in flags.items() if k != "trust_config"}
    file_values = load_yaml(config_file) if config_file else {}
    resume = flags.get("resume") or file_values.get("resume")
    if resume == "auto":  # issue 17: continue the run in --output-dir if it holds one, else start it (a folder named auto: ./auto)
        resume = _auto_resume(file_values, flags)
    if resume:
        return _resume_config(Path(resume), file_values, flags, trusted)
    cfg = build_config(file_values, flags)
    return claim_output_dir(cfg) if claim else cfg


def _auto_resume(file_values: dict[str, Any], flags: dict[str, Any]) -> str | None:
    """--resume auto: the run directory to continue, or None (and no resume key left) to start the run."""
    from ignite_app.train.autoresume import auto_resume_dir

    file_values.pop("resume", None)
    flags.pop("resume", None)
    return auto_resume_dir(build_config(file_values, flags))


def claim_output_dir(cfg: Config, held: ExitStack | None = None) -> Config:
    """The run's directory, created and locked: --output-dir or a new runs/<dataset>-<timestamp>[-N].

    The lock stays held until ``held`` closes (without ``held``, it is released at once); a fresh run
    refuses a directory that holds files, and any run refuses one that another process holds.
    """
    from ignite_app.io.lock import claim_run_dir

    out, lock = claim_run_dir(cfg.output_dir, default_output_dir(cfg.dataset), fresh=not cfg.resume)
    if held is not None:
        held.callback(lock.release)
    else:
        lock.release()
    return cfg.replace(output_dir=out)


def _resume_config(resume: Path, file_values: dict[str, Any], flags: dict[str, Any], trusted: bool = False) -> Config:
    from ignite_app.io.paths import resume_run_dir
    from ignite_app.io.trust import require_trusted

    run_dir = resume_run_dir(resume)
    saved = load_yaml(run_dir / "config.yaml")
    saved_cfg = build_config(saved, {})
    asked = {**file_values, **flags}
    require_trusted(saved_cfg, run_dir, trusted, {"--model": asked.get("model"), "--dataset": asked.get("dataset")})
    out = asked.get("output_dir")
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise UserError(f"--output-dir {out} conflicts with --resume {resume}: a resumed run continues in {run_dir}")
    cfg = build_config(saved, {**asked, "output_dir": str(run_dir), "resume": str(resume)})
    key = changed_fixed_key(saved_cfg, cfg)
    if key is not None:
        raise UserError(
            f"--{key.replace('_', '-')} cannot change when resuming (run has {getattr(saved_cfg, key)!r}, "
            f"asked {getattr(cfg, key)!r}); start a new run with --output-dir instead"
        )
    if saved_cfg.lr_schedule in ("cosine", "onecycle") and cfg.epochs > saved_cfg.epochs:
        raise UserError(  # its scheduler, restored from the checkpoint, keeps the old length: cosine rises again, onecycle stays ~0
            f"--epochs {cfg.epochs}: this run's {saved_cfg.lr_schedule} schedule is laid out over its {saved_cfg.epochs} epochs "
            "and cannot be stretched; resume with at most that many, or start a new run with --output-dir"
        )
    if cfg.class_weights == "auto" and isinstance(saved_cfg.class_weights, tuple):
        cfg = cfg.replace(class_weights=saved_cfg.class_weights)  # the weights the run found, not found again
    return cfg


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
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def logs_command(run_dirs: tuple[Path, ...], csv_path: Path | None, plot_path: Path | None, overwrite: bool) -> None:
    """Summarise runs: last and best value of every TensorBoard scalar, early stopping, best checkpoint.

    Several runs (or a folder of runs, such as runs/) are compared side by side.
    """

    def action() -> int:
        from ignite_app.io.paths import guard_output
        from ignite_app.tools.logs import show_logs

        for path, flag in ((csv_path, "--csv"), (plot_path, "--plot")):
            if path is not None:
                guard_output(path, flag, [], overwrite)

        return show_logs(list(run_dirs), csv_path, plot_path, click.echo)

    sys.exit(guarded(action))


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", help="Evaluate on this dataset instead of the run's (same forms as train --dataset).")
@click.option("--target", help="CSV target column of --dataset, by name or index. [default: last column]")
@click.option("--split", type=click.Choice(("train", "val", "test", "all")),
              help="train or val (the run's fixed split), test (its --test-dataset) or all rows. [default: val; all with --dataset]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric name to value, nothing else.")
@click.option("--trust-config", is_flag=True, help=TRUST_HELP)
@click.option("--batch-size", type=int, help="Samples per batch. [default: up to 4096, as memory allows]")  # issue 16
def evaluate_command(checkpoint: Path, dataset: str | None, target: str | None, split: str | None, device: str, as_json: bool,
                     trust_config: bool, batch_size: int | None) -> None:
    """Evaluate CHECKPOINT with the run's metrics and print them.

    CHECKPOINT is a checkpoint_*.pt or best_model_*.pt in a run's checkpoints/ folder, or a run
    directory (its best model). The model is rebuilt from the run's config.yaml.
    """

    def action() -> int:
        import json

        from ignite_app.io.trust import require_trusted_run

        _inference_start(checkpoint)  # a wrong path fails before torch is imported; then ignite without FSDP/DTensor
        require_trusted_run(checkpoint, trust_config, {"--dataset": dataset})
        from ignite_app.tools.inference import evaluate, format_evaluation

        _quiet_ignite()
        split_ = split or ("all" if dataset else "val")
        result = evaluate(checkpoint, file_dataset(dataset) if dataset else None, target, split_, device, batch_size)
        click.echo(json.dumps({**result.metrics, **result.tables}) if as_json else format_evaluation(result))
        return 0

    sys.exit(guarded(action))


@main.command("predict")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="CSV or NPZ (array x) of inputs, or for an image model an image file or a folder of them (sorted by path). A CSV holds the training feature columns in training order, "
                   "with or without a header; if it has one column more, that extra target column is dropped "
                   "(--target, else the run's --target, else the last column).")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="CSV (label, prob_0, ... or output_0, ...) or NPZ (labels and probabilities, or outputs).")
@click.option("--target", help="The column to drop from a CSV --input that has one column more than the features.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--trust-config", is_flag=True, help=TRUST_HELP)
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--batch-size", type=int, help="Samples per batch. [default: up to 4096, as memory allows]")  # issue 16
def predict_command(checkpoint: Path, input_path: Path, output_path: Path, target: str | None, device: str,
                    trust_config: bool, overwrite: bool, batch_size: int | None) -> None:
    """Predict with CHECKPOINT (a checkpoint file or a run directory): class probabilities and labels, or regression outputs."""

    def action() -> int:
        from ignite_app.io.paths import guard_output, resolve_checkpoint
        from ignite_app.io.trust import require_trusted_run

        _inference_start(checkpoint)  # a wrong path fails before torch is imported; then ignite without FSDP/DTensor
        require_trusted_run(checkpoint, trust_config)
        guard_output(output_path, "--output", [input_path, *resolve_checkpoint(checkpoint)], overwrite)
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
@click.option("--trust-config", is_flag=True, help=TRUST_HELP)
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def export_command(checkpoint: Path, fmt: str, output: Path | None, trust_config: bool, overwrite: bool) -> None:
    """Export the model of CHECKPOINT (a checkpoint file or a run directory)."""

    def action() -> int:
        from ignite_app.io.paths import guard_output, resolve_checkpoint
        from ignite_app.io.trust import require_trusted_run
        from ignite_app.tools.export import FORMATS, default_output

        require_trusted_run(checkpoint, trust_config)
        source = resolve_checkpoint(checkpoint)[1]
        if fmt in FORMATS:  # export() names a wrong format itself
            guard_output(output or default_output(source, fmt), "--output", [source], overwrite)
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
        model_arg = flags.pop("model_arg")
        values = {k: v for k, v in {**flags, "compile": compile_}.items() if v is not None}
        values.update(model_arg_flags(model_arg))
        file_values = load_yaml(config_file) if config_file else {}
        if values.get("resume") or file_values.get("resume"):
            raise UserError("lr-find always starts from fresh weights; drop --resume")
        return lr_find(build_config(file_values, values), start_lr, end_lr, num_iter, plot, click.echo)

    sys.exit(guarded(action))


# issue 14: tune


@main.command("tune")
@train_options
@click.option("--trials", type=int, required=True, help="How many trials the study holds (all processes together).")
@click.option("--search", "search_path", type=click.Path(path_type=Path), required=True,
              help="YAML of distributions, e.g. lr: {log_uniform: [1e-4, 1e-1]}, batch_size: {choice: [32, 64]}.")
@click.option("--storage", help="Optuna storage shared by processes: sqlite:///study.db, an RDB URL, or a journal file. "
                                "[default: OUTPUT_DIR/study.journal]")
@click.option("--study-name", help="Study name in the storage. [default: the name of --output-dir]")
@click.option("--pruner", type=click.Choice(("median", "halving", "none")), default="median", show_default=True,
              help="Prune unpromising trials at each validation: median or successive halving.")
@click.option("--sampler-seed", type=int, help="Seed of the TPE sampler (reproducible studies in one process).")
def tune_command(config_file: str | None, compile_: bool | None, trials: int, search_path: Path, storage: str | None,
                 study_name: str | None, pruner: str, sampler_seed: int | None, **flags: Any) -> None:
    """Search hyper-parameters with Optuna; each trial is a run directory OUTPUT_DIR/trial-NNN.

    Takes the train options and --config file as the fixed part of every trial. Several processes or
    machines on one --storage work on one study; run the same command again to continue a stopped one.
    """

    def action() -> int:
        _quiet_ignite()
        from ignite_app.fastimport import import_ignite

        import_ignite()
        from ignite_app.tools.tune import TuneSpec, load_search, require_optuna, tune

        require_optuna()
        model_arg = flags.pop("model_arg")
        values = {k: v for k, v in {**flags, "compile": compile_}.items() if v is not None}
        values.update(model_arg_flags(model_arg))  # issue 12
        file_values = load_yaml(config_file) if config_file else {}
        study_dir = _study_dir(values, file_values, trials)
        build_config(file_values, values)  # the fixed part fails here, before any trial
        spec = TuneSpec(study_dir, trials, load_search(search_path, {**file_values, **values}), storage, study_name,
                        pruner, sampler_seed)

        def new_config(params: Any, run_dir: Path) -> Config:
            return claim_output_dir(build_config(file_values, {**values, **params, "output_dir": str(run_dir)}))

        def resume_config(run_dir: Path) -> Config:
            return resolve_train_config(None, {"resume": str(run_dir)})

        return tune(spec, new_config, resume_config, click.echo, lambda line: click.echo(line, err=True))

    sys.exit(guarded(action))


def _study_dir(values: dict[str, Any], file_values: dict[str, Any], trials: int) -> Path:
    if values.get("resume") or file_values.get("resume"):
        raise UserError("tune starts and resumes its trials itself; drop --resume (run the same tune command to continue)")
    if trials < 1:
        raise UserError(f"invalid --trials {trials}: expected an integer >= 1")
    out = values.pop("output_dir", None) or file_values.pop("output_dir", None)
    if not out:
        raise UserError("tune needs --output-dir STUDY_DIR: the folder of the study (trial-NNN run directories)")
    return Path(out)


if __name__ == "__main__":  # pragma: no cover
    main()
