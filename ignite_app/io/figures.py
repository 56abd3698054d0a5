"""Figures written to disk (``logs --plot``, ``lr-find --plot``): matplotlib without pyplot, saved atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ignite_app.errors import UserError
from ignite_app.io.atomic import atomic_write_bytes

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def require_matplotlib(flag: str) -> None:
    """One Error line naming the extra to install when matplotlib is missing: call it before any work is done."""
    new_figure(flag)


def new_figure(flag: str, **kwargs: Any) -> Any:
    """A matplotlib Figure (no global pyplot state); one Error line naming the extra when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(f"{flag} needs matplotlib: pip install 'ignite_app[plot]'") from None
    return Figure(**kwargs)


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` in the format its suffix names (.png, .svg or .pdf), whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
