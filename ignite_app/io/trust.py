"""Code runs only from where the user says: the trust model for run directories. Imports no torch.

A run directory can come from anyone. Its config.yaml may name the user's own code (``model:`` or
``dataset:`` as ``package.module:NAME``); commands that read a run directory import that code only
when the user consents on the command line: ``--trust-config``, or the same path passed explicitly
(``--model``/``--dataset``). Checkpoints never run code (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

from ignite_app.config import Config, names_code
from ignite_app.errors import UserError

TRUST_FLAG = "--trust-config"


def untrusted_imports(cfg: Config, given: dict[str, str | None]) -> list[tuple[str, str]]:
    """(flag, import path) pairs of ``cfg`` that would be imported, minus those the user passed as ``given``."""
    named = [("--model", cfg.model), ("--dataset", cfg.dataset)]
    return [(flag, path) for flag, path in named if names_code(path) and given.get(flag) != path]


def require_trusted(cfg: Config, run_dir: Path, trusted: bool, given: dict[str, str | None] | None = None) -> None:
    """Refuse to import code named by ``run_dir``'s config.yaml unless the command line consents."""
    if trusted:
        return
    pending = untrusted_imports(cfg, given or {})
    if pending:
        flag, path = pending[0]
        raise UserError(
            f"{run_dir}/config.yaml names code to import ({flag} {path}); nothing was imported. If you trust this "
            f"run directory, pass {TRUST_FLAG} (or {flag} {path}); see docs/security.md"
        )


def require_trusted_run(checkpoint: Path, trusted: bool, given: dict[str, str | None] | None = None) -> None:
    """:func:`require_trusted` for the run directory that ``checkpoint`` (a file or a run directory) belongs to."""
    from ignite_app.io.paths import resolve_checkpoint, run_config

    run_dir, _ = resolve_checkpoint(checkpoint)
    require_trusted(run_config(run_dir), run_dir, trusted, given)
