"""Softmax regression: one linear map from pixels to class scores."""

from __future__ import annotations

from math import prod

from torch import nn

from robustkit.config import TrainConfig
from robustkit.models.normalize import Normalize
from robustkit.models.zoo import register_model


@register_model(
    "logistic",
    # Chosen on a validation split (benchmarks/tune_defaults.py): a linear model cannot
    # absorb shifts, so no augmentation; SGD at 0.01-0.02 for 10 epochs tops out near 90.6%.
    train=TrainConfig(epochs=10, batch_size=64, lr=0.01, optimizer="sgd", weight_decay=5e-4,
                      augment="none", label_smoothing=0.0),
)
def logistic(in_shape, num_classes, mean, std) -> nn.Module:
    """Softmax regression (multinomial logistic regression) on the normalized pixels.

    The softmax itself lives in the loss; the model returns logits (N, num_classes).
    A linear model makes FGSM's perturbation exact in closed form, which tests use.

    Example:
        >>> m = logistic((1, 28, 28), 10, (0.5,), (0.5,))
        >>> m.linear.weight.shape
        torch.Size([10, 784])
    """
    model = nn.Sequential()
    model.add_module("normalize", Normalize(mean, std))
    model.add_module("flatten", nn.Flatten())
    model.add_module("linear", nn.Linear(prod(in_shape), num_classes))
    return model
