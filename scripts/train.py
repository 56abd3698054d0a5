#!/usr/bin/env python
"""Train a model: the same command as ``ignite-app train``. See ``python scripts/train.py --help``."""

from ignite_app.cli import train_command

if __name__ == "__main__":
    train_command()
