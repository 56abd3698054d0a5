#!/usr/bin/env python
"""``scripts/train.py`` with a fault injected into every checkpoint write, for the end-to-end tests.

``TEST_FAULT=slow-save:SECONDS`` pauses each save after its first write (a kill lands mid-save);
``TEST_FAULT=enospc-save:N`` makes the N-th and later saves fail half-way with ENOSPC;
``TEST_FAULT=enospc-events:N`` makes the N-th and later TensorBoard event records fail with ENOSPC.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import failing_event_writes, full_disk_from, slow_writes  # noqa: E402

from ignite_app.cli import train_command  # noqa: E402
from ignite_app.io import checkpoint  # noqa: E402


def install(spec: str) -> None:
    """Make every AtomicSaver built from now on wrap its files as ``spec`` says."""
    kind, _, value = spec.partition(":")
    if kind == "enospc-events":
        failing_event_writes(int(value))
        return
    wrap = slow_writes(float(value)) if kind == "slow-save" else full_disk_from(int(value))
    original = checkpoint.AtomicSaver.__init__

    def init(self, dirname, write=True, wrap_file=None):
        original(self, dirname, write, wrap_file or wrap)

    checkpoint.AtomicSaver.__init__ = init


if __name__ == "__main__":
    install(os.environ["TEST_FAULT"])
    train_command()
