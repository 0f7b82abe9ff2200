"""Input and number checks shared by every layer; each raises :class:`RobustkitError`.

They refuse bad input with a message that names the problem and never clamp or repair
it: a silently repaired input would give a number that looks right and is not.

Example:
    >>> check_eps(0.3)
    0.3
    >>> check_name("..", "experiment.name")
    Traceback (most recent call last):
    ...
    robustkit.errors.RobustkitError: experiment.name: '..' is not a safe folder name ...
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import torch

from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: The longest name (in UTF-8 bytes) that becomes a folder or file name.
MAX_NAME_BYTES = 100


def check_inputs(x: Any, y: Any = None, *, what: str = "attack") -> None:
    """Refuse bad images and labels; never clamp.

    Args:
        x: images (N, C, H, W), floating point, finite, in [0, 1].
        y: labels (N,), integer, or None.
    """
    if not isinstance(x, torch.Tensor):
        raise RobustkitError(f"{what}: x must be a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise RobustkitError(
            f"{what}: x must have rank 4 (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise RobustkitError(f"{what}: x must be floating point in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise RobustkitError(f"{what}: x is an empty batch")
    # min and max propagate NaN, and an Inf is an extreme: one pass, no (N, C, H, W) mask,
    # so checking a large dataset costs no memory (torch.isfinite(x) took 1.75x x here).
    lo_t, hi_t = torch.aminmax(x)
    lo, hi = lo_t.item(), hi_t.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RobustkitError(f"{what}: x contains NaN or Inf")
    if lo < 0 or hi > 1:
        raise RobustkitError(
            f"{what}: x must lie in [0, 1] (normalization belongs inside the model), "
            f"got values in [{lo:.4g}, {hi:.4g}]")
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise RobustkitError(f"{what}: y must be a tensor of labels, got {type(y).__name__}")
        if y.ndim != 1:
            raise RobustkitError(f"{what}: y must have rank 1 (N,), got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise RobustkitError(f"{what}: y must hold integer labels, got dtype {y.dtype}")
        if len(y) != len(x):
            raise RobustkitError(
                f"{what}: batch-size mismatch: {len(x)} images but {len(y)} labels")


def check_labels(y: Tensor, num_classes: int, what: str = "attack") -> None:
    """Labels must lie in [0, num_classes)."""
    lo, hi = int(y.min().item()), int(y.max().item())
    if lo < 0 or hi >= num_classes:
        raise RobustkitError(
            f"{what}: label out of range: labels span [{lo}, {hi}] but the model has "
            f"{num_classes} classes")


def check_eps(eps: Any, what: str = "attack", name: str = "eps") -> float:
    """``eps`` (or another radius-like option) must be a finite number >= 0."""
    message = f"{what}: {name} must be a finite number >= 0, got {eps!r}"
    if isinstance(eps, bool):
        raise RobustkitError(message)
    try:
        value = float(eps)
    except (TypeError, ValueError, OverflowError):
        raise RobustkitError(message) from None
    if not math.isfinite(value) or value < 0:
        raise RobustkitError(message)
    return value


def check_positive_int(value: Any, what: str, name: str, minimum: int = 1) -> int:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RobustkitError(f"{what}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_name(name: Any, where: str) -> str:
    """A name that becomes a folder or file name: non-empty, at most 100 UTF-8 bytes, no
    ``/`` or ``\\``, not ``.`` or ``..``, no NUL or other control characters."""
    if not isinstance(name, str) or not name.strip():
        raise RobustkitError(f"{where}: must be a non-empty name, got {name!r}")
    bad = [c for c in name if unicodedata.category(c).startswith("C") and c != "\u200d"]
    if (name in (".", "..") or "/" in name or "\\" in name or bad
            or name != name.strip() or name.startswith(".")):
        raise RobustkitError(
            f"{where}: {name!r} is not a safe folder name (no leading '.', no '/', '\\', "
            f"surrounding spaces, control or format characters)")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise RobustkitError(
            f"{where}: {name[:20]!r}... is {len(name.encode('utf-8'))} bytes long; "
            f"names are at most {MAX_NAME_BYTES} bytes")
    return name
