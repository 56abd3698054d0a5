"""Files: crash-safe writes (``atomic``), checkpoints (``checkpoint``), run directories and paths (``paths``)."""
