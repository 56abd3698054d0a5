"""Arguments of a model's constructor: the ones the data determines, and a check of the names given.

A model is any callable that returns an ``nn.Module`` (a class, or a factory such as ``timm.create_model``).
The arguments the data fixes (classes, outputs, input features, input channels) are filled in under the
names the callable's signature uses, unless the user gave them. Nothing here imports or builds the model.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

from ignite_app.data.sources import DataSpec
from ignite_app.errors import UserError

# The names under which models take what the data determines.
OUTPUT_NAMES = ("num_classes", "n_classes", "num_outputs", "out_features", "output_dim", "out_dim", "num_labels")
FEATURE_NAMES = ("in_features", "input_dim", "in_dim", "num_features", "n_features", "input_size")
CHANNEL_NAMES = ("in_chans", "in_channels", "num_channels", "input_channels")
# timm's create_model takes num_classes and in_chans through **kwargs, so its signature does not show them.
TIMM_DATA_ARGS = ("num_classes", "in_chans")


def data_values(spec: DataSpec) -> dict[str, int]:
    """What the data determines, under every name a model may use for it."""
    values = {name: spec.num_outputs for name in OUTPUT_NAMES}
    values.update({name: math.prod(spec.input_shape) for name in FEATURE_NAMES})
    if len(spec.input_shape) >= 2:  # (channels, ...): only then is there a channel count
        values.update({name: spec.input_shape[0] for name in CHANNEL_NAMES})
    return values


def keyword_names(fn: Callable[..., Any]) -> tuple[list[str], bool] | None:
    """The names ``fn`` accepts as keywords and whether it takes ``**kwargs``; None when it has no signature."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = [p.name for p in signature.parameters.values()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return names, var_kw


def is_timm_factory(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is one of timm's model factories (``timm.create_model`` and friends)."""
    return (getattr(fn, "__module__", "") or "").split(".")[0] == "timm"


def resolve_model_args(fn: Callable[..., Any], given: Mapping[str, Any], spec: DataSpec, label: str) -> dict[str, Any]:
    """The keyword arguments to call ``fn`` with: ``given``, checked against its signature, plus the data's values."""
    found = keyword_names(fn)
    if found is None:
        return dict(given)
    names, var_kw = found
    if not var_kw:
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise UserError(f"--model {label} takes no argument {unknown[0]!r}; it accepts: {', '.join(names) or 'none'}")
    accepted = list(names) + (list(TIMM_DATA_ARGS) if is_timm_factory(fn) else [])
    filled = {name: value for name, value in data_values(spec).items() if name in accepted and name not in given}
    args = {**filled, **dict(given)}
    if is_timm_factory(fn) and args.get("pretrained"):
        raise UserError(f"--model {label}: pretrained=true would download weights at run time; "
                        "drop it and pass a local file with --init-weights")
    missing = [p.name for p in inspect.signature(fn).parameters.values()
               if p.default is inspect.Parameter.empty and p.name in names and p.name not in args]
    if missing:
        raise UserError(f"--model {label} needs argument {missing[0]!r}: pass --model-arg {missing[0]}=VALUE "
                        "(or model_args: in the --config file)")
    return args
