"""Models that only scripts/bench.py uses, importable as ``bench_models:NAME`` (scripts/ is on its path)."""

from __future__ import annotations

from ignite_app.models import MLP


class BigMLP(MLP):
    """64-4096-4096-10: 17.1M parameters, for the checkpoint-stall benchmark (``--big-checkpoint``)."""

    def __init__(self, in_features: int = 64, out_features: int = 10) -> None:
        super().__init__(in_features, out_features, hidden=(4096, 4096))
