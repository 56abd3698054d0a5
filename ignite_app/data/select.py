"""``--dataset`` to :class:`~ignite_app.data.sources.Splits`: image folders and arrays on disk first, then :mod:`ignite_app.data.sources`.

A separate module because the image and array sources build on :mod:`ignite_app.data.sources`
(``Splits``, ``ArrayDataset``), which therefore cannot import them back.
"""

from __future__ import annotations

from ignite_app.config import Config
from ignite_app.data import sources
from ignite_app.data.preprocess import Preprocessor
from ignite_app.data.sources import Splits
from ignite_app.errors import UserError


def load_splits(cfg: Config, preprocess: Preprocessor | None = None) -> Splits:
    """Build the train and validation data that ``cfg.dataset`` names (tabular data preprocessed as ``preprocess`` says)."""
    new_source = cfg.dataset.startswith(("imagefolder:", "npy:"))
    if new_source and cfg.target is not None:
        raise UserError(f"--target only applies to csv: datasets, not {cfg.dataset!r}; remove it")
    if cfg.dataset.startswith("imagefolder:"):
        from ignite_app.data.image_cache import load_image_splits

        return load_image_splits(cfg)
    if cfg.dataset.startswith("npy:"):
        from ignite_app.data.arrays import load_npy_splits

        return load_npy_splits(cfg)
    if cfg.dataset.startswith("npz:"):  # over the memory budget: streamed, as npy: is
        from ignite_app.data.npz_stream import streamed_npz_splits

        streamed = streamed_npz_splits(cfg, preprocess)
        if streamed is not None:
            return streamed
    return sources.load_splits(cfg, preprocess)
