"""The model registry: ``create(name, in_shape, num_classes, **options)``.

Each model module registers a factory with its default training settings, chosen on a
validation part of ``mnist-5k``'s training split (``benchmarks/tune_defaults.py``).

Example:
    >>> model = create("mlp", in_shape=(1, 28, 28), hidden=(64,))
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping, Sequence
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
    shape, num_classes = _check_shape(in_shape, num_classes)
    channels = shape[0]
    try:
        mean_t = tuple(float(m) for m in (mean if mean is not None else [0.5] * channels))
        std_t = tuple(float(s) for s in (std if std is not None else [0.5] * channels))
    except (TypeError, ValueError):
        raise RobustkitError(f"mean and std must be numbers, one per channel: {mean!r}, "
                             f"{std!r}") from None
    if len(mean_t) != channels or len(std_t) != channels:
        raise RobustkitError(f"mean and std need {channels} values (one per channel)")
    plain = check_options(name, options)
    try:
        model = spec.factory(shape, num_classes, mean_t, std_t, **options)
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        if isinstance(err, RobustkitError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobustkitError(f"model {name!r}: bad options {plain}: {first}") from None
    record: Any = {  # read by robustkit.models.save
        "name": name,
        "in_shape": list(shape),
        "num_classes": int(num_classes),
        "mean": list(mean_t),
        "std": list(std_t),
        "options": plain,
    }
    model.robustkit_spec = record
    return model


#: The largest image (C * H * W) and number of classes a model may be built for: beyond
#: them a (tampered) checkpoint or config would only exhaust memory.
MAX_ELEMENTS = 2**31


def _check_shape(in_shape: Sequence[int], num_classes: int
                 ) -> tuple[tuple[int, int, int], int]:
    """``(in_shape, num_classes)``: three positive ints, and an int in [2, 2**31]; checked
    without building anything."""
    try:
        shape = tuple(operator.index(s) for s in in_shape)
    except TypeError:  # floats, strings, or not a sequence at all
        raise RobustkitError(f"in_shape must be (C, H, W) with positive integer sizes, got "
                             f"{in_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise RobustkitError(f"in_shape must be (C, H, W) with positive sizes, got {shape}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise RobustkitError(f"in_shape {shape} has {math.prod(shape):,} elements per image; "
                             f"at most {MAX_ELEMENTS:,}")
    try:
        if isinstance(num_classes, bool):
            raise TypeError
        k = operator.index(num_classes)
    except TypeError:
        raise RobustkitError(f"num_classes must be an integer, got {num_classes!r}") from None
    if k < 2 or k > MAX_ELEMENTS:
        raise RobustkitError(f"num_classes must be at least 2 and at most {MAX_ELEMENTS:,}, "
                             f"got {k}")
    return (shape[0], shape[1], shape[2]), k


def valid_options(name: str) -> dict[str, Any]:
    """The options model ``name`` takes, with their defaults (``inspect.Parameter.empty``
    where there is none); read from its factory's signature.

    Example:
        >>> sorted(valid_options("mlp"))
        ['activation', 'dropout', 'hidden']
    """
    params = list(inspect.signature(MODELS.get(name).factory).parameters.values())
    # The first four are (in_shape, num_classes, mean, std), given by create itself.
    return {p.name: p.default for p in params[4:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` against model ``name``'s factory; return them as plain values.

    Raises:
        RobustkitError: the model is unknown, an option is one the factory does not take
            (the message lists the valid ones), or a value is not a number, string, bool
            or list of them.

    Example:
        >>> check_options("mlp", {"hidden": (64,)})
        {'hidden': [64]}
    """
    valid = valid_options(name)
    if not isinstance(options, Mapping):
        raise RobustkitError(f"model {name!r}: options must be a table of names and values, "
                             f"got {type(options).__name__}")
    takes_any = any(p.kind is p.VAR_KEYWORD  # a factory with **options checks them itself
                    for p in inspect.signature(MODELS.get(name).factory).parameters.values())
    unknown = [] if takes_any else [str(k) for k in options if k not in valid]
    if unknown:
        raise RobustkitError(
            f"model {name!r}: bad options {sorted(unknown)}: it takes no option "
            f"{unknown[0]!r}; valid options: {', '.join(valid) or '(none)'}")
    plain = {}
    for key, value in options.items():
        try:
            plain[str(key)] = _plain(value)
        except RobustkitError:
            raise RobustkitError(
                f"model {name!r}: option {key!r} must be a number, string, bool or a list of "
                f"them, got {type(value).__name__}") from None
    return plain


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
