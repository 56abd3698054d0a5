"""Training: build a run (``build``), its engines and handlers, resume it, launch it under torchrun."""
