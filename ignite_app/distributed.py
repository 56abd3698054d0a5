"""Launch one process's training, joining the process group when torchrun or srun started us."""

from __future__ import annotations

import os
from typing import Any

from ignite_app.config import Config


def launched_distributed() -> bool:
    """True under torchrun (WORLD_SIZE > 1) or a multi-task SLURM step."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def default_backend(cfg: Config) -> str:
    """nccl for CUDA runs, gloo otherwise; ``--backend`` overrides."""
    if cfg.backend:
        return cfg.backend
    import torch

    return "nccl" if torch.cuda.is_available() and not cfg.device.startswith("cpu") else "gloo"


def launch(cfg: Config) -> int:
    """Train in this process; under a launcher, inside ``idist.Parallel``."""
    from ignite_app.run import train

    if not launched_distributed():
        return train(cfg)
    from ignite import distributed as idist

    codes: list[int] = []
    with idist.Parallel(backend=default_backend(cfg)) as parallel:
        parallel.run(_worker, cfg, codes)
    return codes[0] if codes else 1


def _worker(local_rank: int, cfg: Config, codes: list[Any]) -> None:
    from ignite_app.run import train

    codes.append(train(cfg))
