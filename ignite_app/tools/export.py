"""``ignite-app export``: a checkpoint's model as safetensors weights, TorchScript or ONNX.

safetensors holds tensors only (no pickle, no code): the file to share. TorchScript and ONNX hold
the computation too, so they need a model that ``torch.jit.script`` or the ONNX exporter accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ignite_app.errors import UserError, first_line
from ignite_app.io.atomic import atomic_write_bytes
from ignite_app.io.paths import output_file, resolve_checkpoint

if TYPE_CHECKING:  # torch is imported only once the arguments were checked
    from ignite_app.tools.inference import Trained

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIXES = {"safetensors": (".safetensors",), "torchscript": (".pt", ".pth", ".ts"), "onnx": (".onnx",)}
ONNX_OPSET = 17


def safetensors_bytes(trained: Trained) -> bytes:
    """The weights (state dict) with the model's facts as string metadata."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise UserError("--format safetensors needs the safetensors package: pip install 'ignite_app[export]'") from None
    # Own contiguous copies: safetensors refuses tensors that share memory (tied weights).
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in trained.model.state_dict().items()}
    return save(tensors, metadata=export_metadata(trained))


def export_metadata(trained: Trained) -> dict[str, str]:
    """What a reader needs to rebuild the model: the --model value, the task and the shapes."""
    spec = trained.spec
    from ignite_app.config import model_args_dict

    meta = {"format": "pt", "model": trained.cfg.model, "model_args": json.dumps(model_args_dict(trained.cfg.model_args)),
            "task": spec.task, "input_shape": json.dumps(list(spec.input_shape)),
            "num_outputs": str(spec.num_outputs), "checkpoint": trained.path.name}
    if trained.preprocess is not None:  # the weights take preprocessed inputs: how to make them from raw rows
        meta["preprocessing"] = trained.preprocess.to_json()
    return meta


def exported_module(trained: Trained) -> Any:
    """What TorchScript and ONNX files hold: the model behind its stored preprocessing, so raw rows go in."""
    return trained.model if trained.preprocess is None else trained.preprocess.wrap(trained.model).eval()


def torchscript_bytes(trained: Trained) -> bytes:
    """The model compiled by ``torch.jit.script`` (control flow kept, unlike tracing)."""
    import torch

    try:
        scripted = torch.jit.script(exported_module(trained))
    except Exception as exc:
        raise UserError(f"this model cannot be exported to TorchScript ({first_line(exc)}); "
                        "use --format safetensors (weights only) or --format onnx") from None
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def onnx_bytes(trained: Trained) -> bytes:
    """The model as ONNX (opset 17) with a dynamic batch dimension: ``input`` -> ``output``."""
    import torch

    try:
        import onnx  # noqa: F401  # torch.onnx.export needs it
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install 'ignite_app[export]'") from None
    example = torch.zeros(2, *trained.spec.input_shape)  # raw rows: the preprocessing is inside
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), native_stdout_silenced():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is the legacy one
            torch.onnx.export(
                exported_module(trained), (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    except Exception as exc:
        raise UserError(f"this model cannot be exported to ONNX ({first_line(exc)}); "
                        "use --format safetensors (weights only) or --format torchscript") from None
    return buffer.getvalue()


@contextlib.contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """Silence file descriptor 1: the ONNX exporter's C++ code prints its whole graph there when it fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


EXPORTERS: dict[str, Callable[[Trained], bytes]] = {
    "safetensors": safetensors_bytes, "torchscript": torchscript_bytes, "onnx": onnx_bytes,
}


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``best_model_46.safetensors``, ``best_model_46.torchscript.pt``, ``best_model_46.onnx`` in the working directory."""
    middle = ".torchscript" if fmt == "torchscript" else ""  # never the name of a checkpoint file
    return Path(Path(checkpoint).stem + middle + SUFFIXES[fmt][0])


def export(checkpoint: Path, fmt: str, output: Path | None = None) -> Path:
    """Write the model of ``checkpoint`` in format ``fmt``; returns the path written."""
    if fmt not in FORMATS:
        raise UserError(f"invalid --format {fmt!r}: choose {', '.join(FORMATS)}")
    path = output or default_output(resolve_checkpoint(Path(checkpoint))[1], fmt)
    output_file(path, "--output", SUFFIXES[fmt])
    from ignite_app.tools.inference import load_trained

    atomic_write_bytes(path, EXPORTERS[fmt](load_trained(checkpoint, "cpu")))
    return path

