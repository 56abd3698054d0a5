"""Start-up: import ignite without loading what a training run never uses.

Two imports cost more than the rest of ignite together (``python -X importtime``, RSS):
- ``ignite.handlers.checkpoint`` imports ``ZeroRedundancyOptimizer`` for one ``isinstance`` check, and
  ``torch.distributed.optim`` loads FSDP, DTensor and TorchScript-compiled optimizers with it
  (~0.7 s, ~50 MB). Ignite gets a stand-in class whose ``isinstance`` asks torch's real class once
  torch's module is loaded (before that no instance can exist), and ``torch.distributed.optim``
  stays unimported until someone imports it.
- tensorboardX imports boto3 and comet_ml, when installed, for S3 log directories and Comet
  (~0.15 s, ~9 MB for boto3). They are registered unexecuted and load on first use of a name.

Measured on the 2-core CPU machine (import of the training path, 5 runs): 2.16-2.29 s with the
stand-in against 3.12-3.25 s without, and 237 MB against 289 MB of RSS. The stand-in depends on how
ignite's checkpoint module imports, so it is used only with the ignite versions it was checked on
(:data:`CHECKED_IGNITE`); with any other version ignite is imported as it is, just more slowly.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

ZERO_MODULE = "torch.distributed.optim.zero_redundancy_optimizer"
OPTIONAL_MODULES = ("boto3", "comet_ml")  # imported by tensorboardX at import time, used only on request
CHECKED_IGNITE = ("0.5.5",)  # pytorch-ignite versions whose import layout the stand-in was checked against


def import_ignite() -> None:
    """Import ignite (and prepare tensorboardX's imports) without the parts a run never uses.

    Call it before anything else imports ignite; afterwards it changes nothing.
    """
    defer_modules(OPTIONAL_MODULES)
    if "ignite" in sys.modules:
        return
    with collection_paused():
        if "torch.distributed.optim" in sys.modules or not stand_in_is_safe():
            import ignite.handlers  # noqa: F401  # as it is, just more slowly
            return
        package = _stand_in_package()
        try:
            import ignite.handlers  # noqa: F401  # binds the stand-in in ignite.handlers.checkpoint
        finally:
            if package is not None:
                sys.modules.pop("torch.distributed.optim", None)  # a later import loads torch's real package
                import torch.distributed

                vars(torch.distributed).pop("optim", None)


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while torch and ignite import; then what they loaded is frozen.

    torch and ignite leave ~177k objects tracked by the collector that live as long as the process;
    each full collection walks all of them (80 ms on the 2-core VM), and a process ran 3-5 of them
    (``gc.callbacks``: ``evaluate`` on 100k rows spent 0.16 s in them, a 3-epoch ``train.py`` 0.37 s;
    now 0.01 s and 0.07 s). ``gc.freeze()`` moves them to the permanent generation, which later
    collections skip; objects freed by reference counting are still freed, only cycles among them
    would stay (imports make few).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def stand_in_is_safe() -> bool:
    """Whether the installed pytorch-ignite is one the stand-in was checked on (read without importing it)."""
    try:
        return importlib.metadata.version("pytorch-ignite") in CHECKED_IGNITE
    except importlib.metadata.PackageNotFoundError:
        return False


def defer_modules(names: tuple[str, ...]) -> list[str]:
    """Register installed, not yet imported modules to load on first use of a missing name; returns them.

    ``import name`` then returns the registered module without running it (importlib's LazyLoader
    would: the import statement reads ``__spec__``, which makes it load).
    """
    deferred = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            continue
        module = importlib.util.module_from_spec(spec)
        module.__getattr__ = _load_on_first_use(module)  # type: ignore[attr-defined]  # PEP 562: missing names only
        sys.modules[name] = module
        deferred.append(name)
    return deferred


def _load_on_first_use(module: ModuleType) -> Any:
    def load(name: str) -> Any:
        if name == "__wrapped__":  # inspect.unwrap's probe: no reason to load
            raise AttributeError(name)
        vars(module).pop("__getattr__", None)
        module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]  # the module's real code
        return getattr(module, name)

    return load


class _ZeroCheck(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        module = sys.modules.get(ZERO_MODULE)
        return module is not None and isinstance(obj, module.ZeroRedundancyOptimizer)

    def __subclasscheck__(cls, sub: type) -> bool:
        module = sys.modules.get(ZERO_MODULE)
        return module is not None and issubclass(sub, module.ZeroRedundancyOptimizer)


class ZeroRedundancyOptimizerStandIn(metaclass=_ZeroCheck):
    """What ignite's checkpoint module holds instead of ``ZeroRedundancyOptimizer``: isinstance-only."""


def _stand_in_package() -> Any:
    """A ``torch.distributed.optim`` that holds only the stand-in, while ignite is imported."""
    import torch.distributed

    if not torch.distributed.is_available():
        return None
    package = ModuleType("torch.distributed.optim")
    package.ZeroRedundancyOptimizer = ZeroRedundancyOptimizerStandIn  # type: ignore[attr-defined]
    sys.modules["torch.distributed.optim"] = package
    torch.distributed.optim = package  # type: ignore[attr-defined]
    return package
