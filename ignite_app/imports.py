"""Import the user's own objects named as ``package.module:NAME``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ignite_app.errors import UserError


def import_object(path: str, flag: str) -> Any:
    """Import ``NAME`` from ``package.module``; the working directory is searched first, as with ``python -m``."""
    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{flag} {path}: cannot import {module_name!r} ({exc}); run from the folder that holds it or install it"
        ) from None
    if not hasattr(module, attr):
        raise UserError(f"{flag} {path}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
