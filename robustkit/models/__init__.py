"""Models: a registry of softmax regression, MLP and AlexNet-style CNN, and checkpoints.

Every model takes inputs in [0, 1] and normalizes them in its first layer.
"""

from robustkit.models import alexnet as _alexnet  # noqa: F401  (registers "alexnet")
from robustkit.models import logistic as _logistic  # noqa: F401  (registers "logistic")
from robustkit.models import mlp as _mlp  # noqa: F401  (registers "mlp")
from robustkit.models.checkpoint import load, read, save
from robustkit.models.normalize import Normalize
from robustkit.models.zoo import MODELS, ModelSpec, create, default_training, names

__all__ = ["MODELS", "ModelSpec", "Normalize", "create", "default_training", "load", "names",
           "read", "save"]
