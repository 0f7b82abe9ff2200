"""Models: a registry (softmax regression, MLP, AlexNet-style CNN, pre-activation
ResNet-18, WideResNet), models by spec (``torchvision:NAME``, ``timm:NAME``,
``package.module:factory``), adapters for models that normalize outside or return more
than logits, and checkpoints.

Every model takes inputs in [0, 1] and normalizes them in its first layer.
"""

from robustkit.models import alexnet as _alexnet  # noqa: F401  (registers "alexnet")
from robustkit.models import logistic as _logistic  # noqa: F401  (registers "logistic")
from robustkit.models import mlp as _mlp  # noqa: F401  (registers "mlp")
from robustkit.models import preact_resnet as _preact  # noqa: F401  (registers "preact_resnet18")
from robustkit.models import wide_resnet as _wide  # noqa: F401  (registers "wide_resnet")
from robustkit.models.building import build, read_weights
from robustkit.models.checkpoint import load, read, save
from robustkit.models.normalize import Normalize
from robustkit.models.wrap import Wrapped, wrap
from robustkit.models.zoo import (MODELS, ModelSpec, check_options, check_spec, create,
                                  default_training, names)

__all__ = ["MODELS", "ModelSpec", "Normalize", "Wrapped", "build", "check_options",
           "check_spec", "create", "default_training", "load", "names", "read", "read_weights",
           "save", "wrap"]
