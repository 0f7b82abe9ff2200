"""The model registry: ``create(name, in_shape, num_classes, **options)``.

Each model module registers a factory with its default training settings, chosen on a
validation part of ``mnist-5k``'s training split (``benchmarks/tune_defaults.py``).

Example:
    >>> model = create("mlp", in_shape=(1, 28, 28), hidden=(64,))
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError
from robustkit.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory and the training settings it reaches its targets with."""

    name: str
    factory: Callable[..., nn.Module]
    train: TrainConfig = field(default_factory=TrainConfig)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, train: TrainConfig | None = None):
    """Decorator: file a factory ``(in_shape, num_classes, mean, std, **options) -> nn.Module``."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(ModelSpec(name, factory, train or TrainConfig()))
        return factory

    return decorate


def names() -> list[str]:
    """The registered model names."""
    return MODELS.names()


def default_training(name: str) -> TrainConfig:
    """The training settings that model ``name`` uses when the user gives none."""
    return MODELS.get(name).train


def create(
    name: str,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`names`.
        in_shape: (C, H, W) of the inputs, which are in [0, 1].
        num_classes: number of logits.
        mean, std: per-channel normalization applied by the model's first layer
            (default 0.5 and 0.5 per channel).
        options: the model's own options (e.g. ``hidden``, ``activation``, ``dropout``).

    Returns:
        An ``nn.Module`` mapping (N, C, H, W) in [0, 1] to (N, num_classes) logits, with a
        ``robustkit_spec`` attribute that :func:`robustkit.models.save` records.
    """
    spec = MODELS.get(name)
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise RobustkitError(f"in_shape must be (C, H, W) with positive sizes, got {tuple(in_shape)}")
    if num_classes < 2:
        raise RobustkitError(f"num_classes must be at least 2, got {num_classes}")
    channels = shape[0]
    mean_t = tuple(float(m) for m in (mean if mean is not None else [0.5] * channels))
    std_t = tuple(float(s) for s in (std if std is not None else [0.5] * channels))
    if len(mean_t) != channels or len(std_t) != channels:
        raise RobustkitError(f"mean and std need {channels} values (one per channel)")
    try:
        model = spec.factory(shape, num_classes, mean_t, std_t, **options)
    except TypeError as err:
        raise RobustkitError(f"model {name!r}: bad options {sorted(options)}: {err}") from None
    model.robustkit_spec = {
        "name": name,
        "in_shape": list(shape),
        "num_classes": int(num_classes),
        "mean": list(mean_t),
        "std": list(std_t),
        "options": _plain(options),
    }
    return model


def _plain(value: Any) -> Any:
    """Options as lists, dicts and scalars, so a checkpoint stores them without pickled code."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise RobustkitError(f"model option {value!r} must be a number, string, bool or list")
