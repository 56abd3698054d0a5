"""How many samples ``evaluate`` and ``predict`` run per batch: large, unless memory says otherwise.

Inference keeps no activations for a backward pass, so batches much larger than training's cost
no more memory per sample and amortise the per-batch overhead (Python, Ignite's events and
metrics updates, kernel launches) over more samples.
"""

from __future__ import annotations

import torch

from ignite_app.errors import UserError

MAX_BATCH = 4096
MEMORY_SHARE = 8  # a batch may take this fraction of the free memory (1/8)...
ACTIVATION_FACTOR = 64  # ...counting the activations as this many copies of its inputs


def inference_batch_size(input_shape: tuple[int, ...], device: torch.device, asked: int | None = None) -> int:
    """``asked`` (``--batch-size``), else :data:`MAX_BATCH` capped so a batch fits in a share of free memory."""
    if asked is not None:
        if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
            raise UserError(f"invalid --batch-size {asked!r}: expected an integer >= 1")
        return asked
    sample_bytes = 4 * max(1, _numel(input_shape)) * ACTIVATION_FACTOR
    return max(1, min(MAX_BATCH, free_memory(device) // MEMORY_SHARE // sample_bytes))


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, else the host's available memory (Linux), else 1 GiB."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**30


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count
