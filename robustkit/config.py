"""Typed configs: dataclasses loaded from TOML and validated at the edge.

:func:`from_dict` turns a plain mapping (as ``tomllib`` returns it) into a dataclass,
refusing unknown keys and wrong types with the field's dotted path in the message.

Example:
    >>> from_dict(TrainConfig, {"epochs": 3, "lr": 0.1}).epochs
    3
    >>> from_dict(TrainConfig, {"epoch": 3})
    Traceback (most recent call last):
    ...
    robustkit.errors.RobustkitError: train.epoch: unknown key; valid keys: ...
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from robustkit.errors import RobustkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "adam")
AUGMENTS = ("none", "shift", "affine")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`robustkit.train.fit` trains a model.

    Attributes:
        epochs: passes over the training data (> 0).
        batch_size: examples per step (> 0).
        lr: peak learning rate of the one-cycle schedule (> 0).
        loss: ``cross_entropy`` or ``mse`` (the course notes' quadratic cost on softmax).
        optimizer: ``sgd`` (Nesterov momentum 0.9) or ``adam``.
        weight_decay: L2 penalty (>= 0).
        label_smoothing: for cross-entropy, in [0, 1).
        augment: ``shift`` (random translations of up to 2 pixels), ``affine`` (rotations
            up to 10 degrees, zoom up to 10% and shifts up to 2 pixels) or ``none``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: str = "none"

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "epochs", f"must be positive, got {self.epochs}")
        _check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        _check(self.lr > 0, "lr", f"learning rate must be positive, got {self.lr}")
        _check(self.loss in LOSSES, "loss", f"must be one of {LOSSES}, got {self.loss!r}")
        _check(self.optimizer in OPTIMIZERS, "optimizer",
               f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.label_smoothing < 1, "label_smoothing",
               f"must be in [0, 1), got {self.label_smoothing}")
        _check(self.augment in AUGMENTS, "augment",
               f"must be one of {AUGMENTS}, got {self.augment!r}")


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise RobustkitError(f"{field}: {message}")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively.

    Errors name the offending field as a dotted path (``path`` is its prefix).
    """
    where = path or cls.__name__.removesuffix("Config").lower()
    if not isinstance(data, dict):
        raise RobustkitError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RobustkitError(
            f"{where}.{unknown[0]}: unknown key; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except RobustkitError as err:
        raise RobustkitError(f"{where}.{err}") from None
    except TypeError as err:  # a required field is missing
        raise RobustkitError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except RobustkitError as err:
                errors.append(str(err))
        raise RobustkitError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RobustkitError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RobustkitError(f"{where}: expected a table, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RobustkitError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise RobustkitError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises :class:`RobustkitError`."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise RobustkitError(f"config {p} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise RobustkitError(f"config {p} is not valid TOML: {err}") from None
