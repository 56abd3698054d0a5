"""Build the model ``--model`` names (a built-in, or the user's own by import path) and check it fits the data."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ignite_app.data.sources import DataSpec
from ignite_app.errors import UserError, first_line
from ignite_app.imports import import_object
from ignite_app.models.args import resolve_model_args
from ignite_app.models.builtin import CNN, MLP


def build_model(name: str, spec: DataSpec, args: Mapping[str, Any] | None = None) -> nn.Module:
    """The model ``--model`` names, called with ``args`` (``--model-arg``) and the arguments the data determines.

    ``auto`` is the CNN for images, else the MLP; the built-ins take arguments too (``hidden``, ``width``, ``dropout``).
    """
    args = dict(args or {})
    if name == "auto":
        name = "cnn" if spec.is_image else "mlp"
    if name == "cnn" and not spec.is_image:
        raise UserError(
            f"--model cnn needs image-shaped samples (channels, height, width), but this data has shape "
            f"{spec.input_shape}; use --model mlp"
        )
    factory = BUILTIN.get(name) or import_object(name, "--model")
    return call_model(factory, resolve_model_args(factory, args, spec, name), name)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN}


def call_model(factory: Callable[..., Any], args: Mapping[str, Any], label: str) -> nn.Module:
    """``factory(**args)``, which must return an ``nn.Module``; its failures are one-line user errors."""
    if not callable(factory):
        raise UserError(f"--model {label} is not a torch.nn.Module subclass or a function that returns one")
    call = label.split(":")[-1] + "(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    try:
        model = factory(**{k: _thaw(v) for k, v in args.items()})
    except (Exception, SystemExit) as exc:  # SystemExit: a class that calls sys.exit() must not end the run with 0
        raise UserError(f"--model {label}: {call} failed ({type(exc).__name__}: {first_line(exc, 300)}); "
                        "fix the --model-arg values") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {label} is not a torch.nn.Module subclass (it returned {type(model).__name__})")
    return model


def _thaw(value: Any) -> Any:
    """Tuples (frozen YAML lists) back to lists, as YAML gives them."""
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def check_model_fits(model: nn.Module, spec: DataSpec, sample: torch.Tensor) -> None:
    """Run one sample batch through the model (in eval mode, recording gradients as the step will) and check its
    output, before any training."""
    param = next(model.parameters(), None)
    if param is not None and sample.is_floating_point() and param.is_floating_point() and sample.dtype != param.dtype:
        got, want = (str(t.dtype).removeprefix("torch.") for t in (sample, param))
        raise UserError(f"the dataset gives {got} inputs but the model's parameters are {want}; "
                        f"return {want} tensors from the dataset")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # one forward answers both: the output's shape and whether it can be trained
            out = model(sample)
    except Exception as exc:
        raise UserError(
            f"the model does not accept inputs of shape {tuple(sample.shape[1:])} from this dataset ({first_line(exc)}); "
            "choose a model that fits the data"
        ) from None
    finally:
        model.train(was_training)
    expected = (sample.shape[0], spec.num_outputs)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"the model outputs {got} per batch but this {spec.task} data needs {expected} "
            f"({spec.num_outputs} {'classes' if spec.task == 'classification' else 'targets'}); adjust the model"
        )
    check_model_trains(model, out)


def check_model_trains(model: nn.Module, out: torch.Tensor) -> None:
    """One line, before anything is written, for a model that the training step could not train (a traceback before)."""
    if not out.is_floating_point():
        raise UserError(f"the model outputs {str(out.dtype).removeprefix('torch.')} values, but the loss needs floating-point "
                        "outputs (logits or predicted values); return those, not e.g. an argmax")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has no trainable parameters (none, or all with requires_grad=False); "
                        "give it parameters to train")
    if not out.requires_grad:
        raise UserError("the model's output does not depend on its trainable parameters (is it detached, or computed "
                        "under no_grad?); return the output of its layers")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module behind DDP and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
