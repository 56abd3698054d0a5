"""How many CPU threads torch uses: ``--threads``, else what torch would choose capped by the CPUs this process may run on.

torch's default is the machine's core count, even when a scheduler, a container or ``taskset``
allows this process fewer: on a shared 2-core machine, 2 threads made a 7 s run take 65-80 s.
DataLoader workers get the same count (:func:`ignite_app.data.loaders.set_worker_threads`).
"""

from __future__ import annotations

import os

import torch

from ignite_app.config import Config


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """torch's own choice (``OMP_NUM_THREADS`` or the core count), at most :func:`usable_cpus`."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


def use_threads(cfg: Config) -> Config:
    """Set torch's thread count from ``cfg.threads`` (resolved to :func:`default_threads` when unset); the config that records it."""
    if cfg.threads is None:
        cfg = cfg.replace(threads=default_threads())
    torch.set_num_threads(cfg.threads)
    return cfg
