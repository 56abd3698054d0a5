"""Train/validation splits and batch sizes that fit the amount of data.

:func:`stratified_split` is the one place that splits a dataset's rows; any source (tables, arrays,
image folders) that has one label per row gets a split in which every class keeps its share.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SPLIT_SEED = 0  # the train/validation split is fixed, whatever --seed says
MIN_BATCHES = 10  # fewer training batches per epoch than this: a smaller batch is picked


def stratified_split(labels: np.ndarray | None, size: int, fraction: float,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, val)``: ``round(size * fraction)`` rows (at least 1) go to validation.

    The rows are shuffled by ``seed``. Without ``labels`` the first rows of that order are the
    validation rows; with labels (one class code per row) each class gets its proportional share
    of them (largest remainders), and a class with two or more rows always keeps one for training.
    """
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = min(size - 1, max(1, int(round(size * fraction))))
    if labels is None:
        return order[n_val:], order[:n_val]
    labels = np.asarray(labels)
    quota = class_quotas(labels, n_val)
    # Each class's first quota[c] rows in the shuffled order go to validation. Vectorised: a row's rank
    # among the rows of its class, in that order (a loop over the rows took 45 ms per 125k rows).
    in_order = labels[order]
    counts = np.bincount(in_order, minlength=len(quota))
    by_class = np.argsort(in_order, kind="stable")  # positions grouped by class, shuffled order kept within each
    rank = np.empty(size, dtype=np.int64)
    rank[by_class] = np.arange(size) - np.repeat(np.cumsum(counts) - counts, counts)
    is_val = rank < quota[in_order]
    return order[~is_val], order[is_val]


def class_quotas(labels: np.ndarray, n_val: int) -> np.ndarray:
    """Validation rows per class: shares of ``n_val`` proportional to the class sizes (largest remainders)."""
    counts = np.bincount(labels)
    exact = counts * n_val / len(labels)
    quota = np.floor(exact).astype(np.int64)
    for label in np.argsort(-(exact - quota), kind="stable")[: n_val - int(quota.sum())]:
        quota[label] += 1
    return np.minimum(quota, np.maximum(counts - 1, 0))


def small_data_batch(train_rows: int, batch_size: int, processes: int = 1) -> int:
    """A batch that gives at least :data:`MIN_BATCHES` training batches per epoch, or ``batch_size`` if it does."""
    per_process = math.ceil(train_rows / processes)
    if math.ceil(per_process / batch_size) >= MIN_BATCHES:
        return batch_size
    return max(1, per_process // MIN_BATCHES)
