"""The model registry: ``create(name, in_shape, num_classes, **options)``.

Each model module registers a factory with its default training settings, chosen on a
validation part of ``mnist-5k``'s training split (``benchmarks/tune_defaults.py``).

Wherever a model is named, the name may also be a spec of a model defined elsewhere
(:mod:`robustkit.models.foreign`): ``torchvision:NAME``, ``timm:NAME`` or
``package.module:factory``. Such a model is built bare and put in a
:class:`~robustkit.models.wrap.Wrapped` (``Normalize`` in front when mean and std are
given, the logits picked by ``output``), with a ``robustkit_spec`` like a registered one's.

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
from robustkit.models import foreign
from robustkit.models.wrap import Output, Wrapped, check_mean_std, check_output
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


#: The training settings of a model built from a foreign spec (``torchvision:NAME``, ...),
#: which robustkit has not tuned: :class:`TrainConfig`'s own defaults.
FOREIGN_TRAINING = TrainConfig()


def names() -> list[str]:
    """The registered model names."""
    return MODELS.names()


def registered(name: str) -> ModelSpec:
    """The registered model ``name``; an unknown name lists the valid ones and the other
    forms of a model spec."""
    try:
        return MODELS.get(name)
    except RobustkitError as err:
        raise RobustkitError(f"{err}; {foreign.SPEC_FORMS}") from None


def check_spec(spec: str) -> str:
    """Check a model spec and return its kind (``registered``, ``torchvision``, ``timm``,
    ``factory``); a factory's module is imported here, once (so a later build on the
    ``meta`` device does not import it there).

    Raises:
        RobustkitError: an unknown registered, torchvision or timm name, timm missing, or
            a module or factory that cannot be found.

    Example:
        >>> check_spec("torchvision:resnet18")
        'torchvision'
    """
    kind, _ = foreign.parse(spec)
    if kind == "registered":
        registered(spec)
    else:
        foreign.resolve(spec)
    return kind


def default_training(name: str) -> TrainConfig:
    """The training settings that model ``name`` uses when the user gives none
    (:data:`FOREIGN_TRAINING` for a foreign spec)."""
    if foreign.parse(name)[0] != "registered":
        check_spec(name)
        return FOREIGN_TRAINING
    return registered(name).train


def create(
    name: str,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model, or one named by a spec.

    Args:
        name: one of :func:`names`, or ``torchvision:NAME``, ``timm:NAME``,
            ``package.module:factory`` (:func:`construct`).
        in_shape: (C, H, W) of the inputs, which are in [0, 1].
        num_classes: number of logits.
        mean, std: per-channel normalization applied by the model's first layer
            (default 0.5 and 0.5 per channel; none for a foreign spec).
        options: the model's own options (e.g. ``hidden``, ``activation``, ``dropout``).

    Returns:
        An ``nn.Module`` mapping (N, C, H, W) in [0, 1] to (N, num_classes) logits, with a
        ``robustkit_spec`` attribute that :func:`robustkit.models.save` records.
    """
    return construct(name, in_shape, num_classes, mean, std, options)


def construct(
    name: str,
    in_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    output: Output = None,
) -> nn.Module:
    """Build the model a spec describes (what :func:`create` and checkpoints use).

    Args:
        name: a registered name or a foreign spec.
        in_shape, num_classes: the images (C, H, W) and the number of logits.
        mean, std: per-channel normalization. A registered model always normalizes
            (default 0.5 per channel); a foreign one gets ``Normalize`` in front only when
            they are given (both or neither).
        options: the model's own options.
        output: for a foreign model, how to pick the logits from its output: a key or an
            index (not a function: a checkpoint could not hold it).

    Returns:
        The model (train mode), with ``robustkit_spec``: name, in_shape, num_classes,
        mean, std, options, and for a foreign model output.

    Example:
        >>> m = construct("torchvision:resnet18", (3, 32, 32), 10)
        >>> type(m).__name__, type(m.model).__name__
        ('Wrapped', 'ResNet')
    """
    shape, num_classes = _check_shape(in_shape, num_classes)
    options = {} if options is None else options
    if foreign.parse(name)[0] != "registered":
        return _construct_foreign(name, shape, num_classes, mean, std, options, output)
    if output is not None:
        raise RobustkitError(f"model {name!r}: output applies to torchvision, timm and "
                             f"factory models; a registered model returns its logits")
    spec = registered(name)
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


def _construct_foreign(name: str, shape: tuple[int, int, int], num_classes: int,
                       mean: Sequence[float] | None, std: Sequence[float] | None,
                       options: Mapping[str, Any], output: Output) -> nn.Module:
    """A foreign spec's model, bare, in a :class:`Wrapped` (see :func:`construct`)."""
    mean_t, std_t = check_mean_std(mean, std, channels=shape[0],
                                   what=f"model {name!r}: mean and std")
    output = check_output(output, f"model {name!r}: output")
    if callable(output):
        raise RobustkitError(f"model {name!r}: output must be a key or an index here (a "
                             f"checkpoint cannot hold a function); wrap the model with "
                             f"robustkit.models.wrap(model, output=function) instead")
    plain = check_options(name, options)
    model = Wrapped(foreign.build(name, shape, num_classes, options), mean_t, std_t, output)
    record: Any = {  # read by robustkit.models.save
        "name": name,
        "in_shape": list(shape),
        "num_classes": int(num_classes),
        "mean": None if mean_t is None else list(mean_t),
        "std": None if std_t is None else list(std_t),
        "options": plain,
        "output": output,
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
    if foreign.parse(name)[0] != "registered":
        return foreign.valid_options(name) or {}
    params = list(inspect.signature(registered(name).factory).parameters.values())
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
    kind = foreign.parse(name)[0]
    if kind == "registered":
        registered(name)  # an unknown name first
    if not isinstance(options, Mapping):
        raise RobustkitError(f"model {name!r}: options must be a table of names and values, "
                             f"got {type(options).__name__}")
    if kind != "registered":
        foreign.check_options(name, options)
    else:
        valid = valid_options(name)
        takes_any = any(p.kind is p.VAR_KEYWORD  # a factory with **options checks them itself
                        for p in inspect.signature(registered(name).factory).parameters.values())
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
