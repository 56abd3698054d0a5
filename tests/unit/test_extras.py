"""Optional features name the extra to install, in one line, when their package is missing."""

from __future__ import annotations

import sys

import pytest

from conftest import assert_one_error_line, invoke_app


@pytest.mark.parametrize(
    "missing, args, extra",
    [
        ("matplotlib.figure", ["logs", "{run}", "--plot", "{tmp}/curves.png"], "ignite_app[plot]"),
        ("matplotlib.figure", ["lr-find", "--model", "mlp", "--plot", "{tmp}/lr.png"], "ignite_app[plot]"),
        ("onnx", ["export", "{run}", "--format", "onnx", "--output", "{tmp}/m.onnx"], "ignite_app[export]"),
        ("safetensors.torch", ["export", "{run}", "--output", "{tmp}/m.safetensors"], "ignite_app[export]"),
    ],
    ids=["logs-plot", "lr-find", "onnx", "safetensors"],
)
def test_a_missing_optional_package_is_one_line_naming_its_extra(missing, args, extra, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    result = invoke_app(*(a.format(run=tiny_run, tmp=tmp_path) for a in args))
    assert_one_error_line(result.exit_code, result.stderr, result.output, f"pip install '{extra}'")
    assert list(tmp_path.iterdir()) == []  # failed before any work, nothing written
