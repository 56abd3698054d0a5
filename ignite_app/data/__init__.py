"""Data: where samples come from (``sources``) and how they are batched (``loaders``)."""
