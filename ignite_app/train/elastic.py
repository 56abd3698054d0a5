"""torchrun's elastic restarts: join each attempt's process group afresh, and leave a broken one in one line.

After a worker dies, torchrun (``--max-restarts``) stops the others and starts every worker again;
with ``--resume auto`` the new workers continue the run from its newest checkpoint.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Mapping

from ignite import distributed as idist
from torch import distributed as dist

from ignite_app.errors import AppError

# Text that gloo and NCCL put in the errors of a collective whose peer died, closed its end or hung.
BROKEN_GROUP_MARKERS = ("/gloo/", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "Timed out")


class GroupBroken(AppError):
    """Another process of the job died or hung in the middle of a collective."""


def attempt_prefix(environ: Mapping[str, str] = os.environ) -> str | None:
    """The store prefix of this torchrun attempt, when the workers share the agent's store; else None.

    torchrun's c10d rendezvous hands every attempt the same TCP store, so the keys that the previous
    attempt's process group left there (the gloo addresses of dead workers) would be read as this
    attempt's. The restart count tells the attempts apart (on one node it is the same for every worker;
    across nodes it is not always, which is why docs/preemption.md sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return f"ignite_app/attempt_{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def join_process_group(backend: str, timeout: timedelta) -> None:
    """``idist.initialize(backend, timeout=...)``, with the keys of this attempt kept apart from earlier ones."""
    prefix = attempt_prefix()
    if prefix is None:
        idist.initialize(backend, timeout=timeout)
        return
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=rank, world_size=world_size, timeout=timeout)
    idist.sync()  # ignite's helpers now see the group made here


def is_broken_group(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died or hung (not a bug of this one)."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in BROKEN_GROUP_MARKERS)


@contextmanager
def report_broken_group() -> Iterator[None]:
    """Turn a broken process group into one :class:`GroupBroken` line instead of a traceback on every rank."""
    try:
        yield
    except RuntimeError as exc:
        if not is_broken_group(exc):
            raise
        raise GroupBroken(
            f"the process group broke ({short_reason(exc)}): another process died or hung; "
            "the run continues from its newest checkpoint when the job is restarted with --resume auto"
        ) from None


def short_reason(exc: BaseException) -> str:
    """The gist of a gloo or NCCL error: its first line without the source location, at most 120 characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0][:120]
