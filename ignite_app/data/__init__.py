"""Data: where samples come from and how they reach the model.

``sources`` (built-in, CSV, NPZ, user factories), ``select`` (which source ``--dataset`` names), ``tabular`` and
``preprocess`` (files as users have them; preprocessing learned on the training rows), ``splits``, ``balance``,
``images``/``image_cache``/``augment`` (image folders), ``arrays``/``npz_stream`` (memory-mapped arrays), ``items``
and ``streams`` (dict items, IterableDatasets), ``loaders`` (batches in a resumable order), ``checks`` (finite
tensors, for the data and the checkpoints).
"""
