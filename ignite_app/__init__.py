"""ignite_app: train supervised PyTorch models on pytorch-ignite.

Kept free of heavy imports so that ``ignite-app --help`` answers at once.
"""

__version__ = "0.1.0"
