"""Import the user's own objects named as ``package.module:NAME``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from ignite_app.errors import UserError


def import_object(path: str, flag: str) -> Any:
    """Import ``NAME`` from ``package.module``; the working directory is searched too, after the installed packages.

    Last, not first: files in the working directory (perhaps someone else's run directory) never shadow
    the modules that ignite-app itself imports later, such as ``yaml`` or ``torch``.
    """
    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{flag} {path}: cannot import {module_name!r} ({exc}); run from the folder that holds it or install it"
        ) from None
    if not hasattr(module, attr):
        raise UserError(f"{flag} {path}: module {module_name!r} has no attribute {attr!r}")
    found = getattr(module, attr)
    if inspect.isbuiltin(found) or not callable(found):  # sys:exit, builtins:breakpoint, os:system, a constant
        raise UserError(f"{flag} {path}: {attr} is not a class or function written in Python; name your own class or factory")
    return found
