"""The package's shape: imports flow one way (no cycles) and no module uses another's private names."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ignite_app"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.Module, known: set[str]) -> dict[str, set[str]]:
    """{module imported from ignite_app: names taken from it}, anywhere in the file (function bodies too)."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ignite_app"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:  # `from ignite_app.io import checkpoint`: the submodule itself
                    found.setdefault(sub, set())
                else:
                    found.setdefault(node.module, set()).add(alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ignite_app"):
                    found.setdefault(alias.name, set())
    return found


def test_the_package_has_no_import_cycle():
    trees = modules()
    graph = {name: set(imported(tree, set(trees))) - {name} for name, tree in trees.items()}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_sees_a_cycle_inside_a_function():
    a = ast.parse("def f():\n    from ignite_app.b import g\n")
    assert imported(a, {"ignite_app.b"}) == {"ignite_app.b": {"g"}}


def test_no_module_imports_or_reads_another_modules_private_names():
    trees = modules()
    offences = []
    for name, tree in trees.items():
        for source, names in imported(tree, set(trees)).items():
            offences += [f"{name} imports {source}.{n}" for n in names if n.startswith("_") and not n.startswith("__") and source != name]
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("ignite_app") for a in node.names
                   if f"{node.module}.{a.name}" in trees}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    offences.append(f"{name} reads {node.value.id}.{node.attr}")
    assert offences == []


def test_the_top_level_holds_only_the_edge_and_the_folders_name_the_concerns():
    top = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith("__pycache__"))
    assert {"cli.py", "config.py", "errors.py", "data", "models", "train", "io", "tools"} <= set(top)
    assert len([p for p in top if p.endswith(".py")]) <= 6, top
