"""Models: the built-ins (``builtin``) and building the one ``--model`` names (``build``).

``ignite_app.models:ResNet`` (and ``MLP``, ``CNN``) stay importable from here, as ``--model`` paths.
"""

from ignite_app.models.build import build_model, check_model_fits
from ignite_app.models.builtin import CNN, MLP, ResNet

__all__ = ["CNN", "MLP", "ResNet", "build_model", "check_model_fits"]
