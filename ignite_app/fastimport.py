"""Start-up: keep ``import ignite`` from loading parts of torch that a run never uses.

``ignite.handlers.checkpoint`` imports ``ZeroRedundancyOptimizer`` from ``torch.distributed.optim``
at import time, and that package's ``__init__`` loads FSDP and DTensor: about 0.45 s and 45 MB
(a sixth of a small run's memory) for one ``isinstance`` check. We register the package with
only that class loaded; its ``__init__`` runs in full the first time anything else is asked of it,
so code that needs the rest of ``torch.distributed.optim`` sees no difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

PACKAGE = "torch.distributed.optim"


def defer_torch_distributed_optim() -> bool:
    """Register ``torch.distributed.optim`` half-loaded (call before importing ignite); True if done."""
    if PACKAGE in sys.modules:
        return False
    import torch.distributed

    spec = importlib.util.find_spec(PACKAGE) if torch.distributed.is_available() else None
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = _completing_loader(module)  # type: ignore[attr-defined]  # PEP 562: missing names only
    sys.modules[PACKAGE] = module
    try:
        zero = importlib.import_module(PACKAGE + ".zero_redundancy_optimizer")
    except Exception:
        sys.modules.pop(PACKAGE, None)
        return False
    module.ZeroRedundancyOptimizer = zero.ZeroRedundancyOptimizer  # type: ignore[attr-defined]
    torch.distributed.optim = module  # type: ignore[attr-defined]
    return True


def _completing_loader(module: ModuleType) -> Any:
    def complete(name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name != "__all__":
            raise AttributeError(name)  # probes such as __file__ or __wrapped__ need no full load
        vars(module).pop("__getattr__", None)
        module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]  # the package's real __init__
        return getattr(module, name)

    return complete
