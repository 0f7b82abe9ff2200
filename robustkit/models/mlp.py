"""Multi-layer perceptron with a choice of the course notes' activations."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError
from robustkit.models.zoo import register_model
from robustkit.models.normalize import Normalize

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


@register_model(
    "mlp",
    # Chosen on a validation split (benchmarks/tune_defaults.py): Adam at 2e-3 with random
    # shifts beat SGD by 2 points; shifts alone added a point.
    train=TrainConfig(epochs=20, batch_size=64, lr=0.002, optimizer="adam", weight_decay=0.0,
                      augment="shift", label_smoothing=0.1),
)
def mlp(
    in_shape,
    num_classes,
    mean,
    std,
    hidden: Sequence[int] = (512, 256),
    activation: str = "relu",
    dropout: float = 0.2,
) -> nn.Module:
    """Fully connected network: Linear -> activation -> Dropout per hidden layer, then Linear.

    Args:
        hidden: sizes of the hidden layers (may be empty: then it is softmax regression).
        activation: ``relu``, ``sigmoid``, ``tanh`` or ``leaky_relu``; each layer gets its
            own module instance, so hook-based explainers can tell them apart.
        dropout: drop probability after each hidden activation, in [0, 1).

    Example:
        >>> m = mlp((1, 28, 28), 10, (0.5,), (0.5,), hidden=(32,), activation="tanh")
        >>> type(m.act1).__name__
        'Tanh'
    """
    if activation not in ACTIVATIONS:
        raise RobustkitError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if not 0.0 <= dropout < 1.0:
        raise RobustkitError(f"dropout must be in [0, 1), got {dropout}")
    if any(int(h) < 1 for h in hidden):
        raise RobustkitError(f"hidden sizes must be positive, got {list(hidden)}")
    model = nn.Sequential()
    model.add_module("normalize", Normalize(mean, std))
    model.add_module("flatten", nn.Flatten())
    width = prod(in_shape)
    for i, h in enumerate(hidden, start=1):
        model.add_module(f"fc{i}", nn.Linear(width, int(h)))
        model.add_module(f"act{i}", ACTIVATIONS[activation]())
        if dropout > 0:
            model.add_module(f"drop{i}", nn.Dropout(dropout))
        width = int(h)
    model.add_module("out", nn.Linear(width, num_classes))
    return model
