"""What every attack shares: input checks, the model's state kept, gradients, exit checks.

An attack borrows the model (:func:`robustkit.core.borrowed`): eval mode for the attack,
each submodule's own mode back afterwards, also when the attack raises. Gradients are taken
with ``torch.autograd.grad`` with respect to the input only, so parameters' ``.grad``
is never touched and no weight gradient is computed. The input tensor is never written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.threat import THREATS, ThreatModel, flat_norm
from robustkit.core import (borrowed, check_eps, check_inputs, check_labels,
                            check_positive_int, model_contract, model_device, model_dtype)
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: Slack for the exit checks: float rounding of x + delta may exceed eps by an ulp.
TOLERANCE = 1e-5


_NONNEG = ("eps", "alpha", "c", "kappa", "lr", "overshoot", "decay", "diversity_scale",
           "max_eps")
_FRACTION = ("diversity_prob", "rho")
_POSINT = ("steps", "restarts", "binary_search_steps", "search_steps", "candidates",
           "target_classes", "eot")
_BOOL = ("random_start", "targeted", "amp")
_MAY_BE_NONE = ("alpha", "candidates", "seed")
#: The losses an attack may ascend (see :func:`loss_values`).
LOSSES = ("ce", "dlr", "margin")


def check_value(key: str, value: Any, what: str) -> None:
    """An attack option's value, by the option's name: radii and rates finite and >= 0,
    counts integers >= 1, flags booleans, a known norm, an integer seed. Options of other
    names are the attack's own business."""
    if value is None and key in _MAY_BE_NONE:
        return
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if key in _NONNEG and not (number and math.isfinite(value) and value >= 0):
        raise RobustkitError(f"{what}: {key} must be a finite number >= 0, got {value!r}")
    if key in _FRACTION and not (number and 0 <= value <= 1):
        raise RobustkitError(f"{what}: {key} must be a number in [0, 1], got {value!r}")
    if key in _POSINT and not (number and isinstance(value, int) and value >= 1):
        raise RobustkitError(f"{what}: {key} must be an integer >= 1, got {value!r}")
    if key in _BOOL and not isinstance(value, bool):
        raise RobustkitError(f"{what}: {key} must be true or false, got {value!r}")
    if key == "norm" and value not in THREATS:
        raise RobustkitError(
            f"{what}: norm must be one of {', '.join(THREATS.names())}, got {value!r}")
    if key == "loss" and value not in LOSSES:
        raise RobustkitError(f"{what}: loss must be one of {', '.join(LOSSES)}, got {value!r}")
    if key == "seed" and not (number and isinstance(value, int)) \
            and not isinstance(value, ExampleSeeds):
        raise RobustkitError(f"{what}: seed must be an integer, got {value!r}")


def check_values(what: str, **options: Any) -> None:
    """:func:`check_value` for each option; every attack calls it on its own options."""
    for key, value in options.items():
        check_value(key, value, what)


def threat_model(norm: str, what: str = "attack") -> ThreatModel:
    if norm not in THREATS:
        raise RobustkitError(
            f"{what}: norm must be one of {', '.join(THREATS.names())}, got {norm!r}")
    return THREATS.get(norm)


def prepare(model: nn.Module, x: Tensor, y: Tensor, what: str, probe: bool = True
            ) -> tuple[Tensor, Tensor]:
    """Check inputs and the model's contract, move the inputs to the model's device and
    dtype, and check labels against the logits.

    With ``probe=False`` the model is not run (black-box attacks, whose every forward pass
    is a counted query, check their first query's outputs with
    :func:`robustkit.core.lending.check_outputs` and the labels with ``check_labels``).

    Returns detached copies on the model's device (the caller's tensors are never written),
    the images in channels-last memory format and in the model's floating dtype.
    """
    check_inputs(x, y, what=what)
    dev = model_device(model, x)
    k = model_contract(model, x, what) if probe else None
    # Channels-last images let oneDNN pick its faster convolution kernels (1.1x on a
    # plain NCHW model here); values and shape are unchanged. Images of another floating
    # dtype take the model's (float64 images on a float32 model would otherwise fail).
    x0 = x.detach().to(dev, dtype=model_dtype(model) or x.dtype, copy=True
                       ).contiguous(memory_format=torch.channels_last)
    y0 = y.detach().to(dev, copy=True).long()
    if k is not None:
        check_labels(y0, k, what)
    return x0, y0


def input_grad(model: nn.Module, x_adv: Tensor, y: Tensor, targeted: bool,
               loss: str = "ce") -> tuple[Tensor, Tensor]:
    """Gradient of the attack loss with respect to the input, and the logits.

    The loss is summed over the batch (so one example's step never depends on the others)
    and negated for targeted attacks (descend towards the target).

    Returns:
        ``(grad, logits)``: (N, C, H, W) and (N, K), both detached.
    """
    if loss not in LOSSES:
        raise RobustkitError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv).float()  # (N, K); float32 loss also under mixed precision
    value = loss_values(logits, y, loss).sum()
    if targeted:
        value = -value
    (grad,) = torch.autograd.grad(value, x_adv)
    return grad, logits.detach()


def loss_values(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """Per-example attack loss (N,) of logits (N, K) at labels ``y`` (N,), to be ascended:
    ``ce`` cross-entropy, ``margin`` (:func:`margin`), ``dlr`` (:func:`dlr`)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        return margin(logits, y)
    if loss == "dlr":
        return dlr(logits, y)
    raise RobustkitError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def _check_classes(logits: Tensor, need: int, what: str) -> None:
    if logits.shape[1] < need:
        raise RobustkitError(f"{what} needs at least {need} classes, the model has "
                             f"{logits.shape[1]}")


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio, per example (N,); > 0 means not ``y``.

    Croce and Hein 2020, arXiv 2003.01690, eq. 3:
    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``pi`` sorting the logits
    (N, K) descending. Invariant to shifting and scaling the logits. Needs K >= 3.
    """
    _check_classes(logits, 3, "the DLR loss")
    top = logits.sort(1, descending=True).values  # (N, K)
    return margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted difference of logits ratio, per example (N,), ascended towards ``target``.

    Croce and Hein 2020, arXiv 2003.01690, eq. 4:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Needs K >= 4.
    """
    _check_classes(logits, 4, "the targeted DLR loss")
    top = logits.sort(1, descending=True).values  # (N, K)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Best other logit minus the logit of ``y``, per example (N,); > 0 means not ``y``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def fooled(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Per-example success (N,) bool: label changed (untargeted) or target reached."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


def check_result(x_adv: Tensor, x: Tensor, *, eps: Tensor | float | None, norm: str | None,
                 what: str) -> Tensor:
    """Exit check: every result lies in [0, 1] and, when ``eps`` is given, in the eps-ball.

    A violation is a bug in the attack, not the user's fault: it raises ``RuntimeError``.
    """
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{what}: result shape {tuple(x_adv.shape)} != input {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise RuntimeError(f"{what}: result contains NaN or Inf")
    if x_adv.min().item() < 0 or x_adv.max().item() > 1:
        raise RuntimeError(f"{what}: result left [0, 1]")
    if eps is not None and norm is not None:
        p = THREATS.get(norm).p
        size = flat_norm(x_adv - x, p)  # (N,)
        bound = torch.as_tensor(eps, dtype=size.dtype, device=size.device).reshape(-1)
        if (size > bound * (1 + TOLERANCE) + TOLERANCE).any():
            worst = (size - bound).max().item()
            raise RuntimeError(f"{what}: result left the {norm} eps-ball (by {worst:.3g})")
    return x_adv


def per_example(value: float | Tensor, n: int, like: Tensor) -> Tensor:
    """A scalar or (N,) tensor as an (N, 1, 1, 1) tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise RobustkitError(f"expected one value or {n} values, got {t.numel()}")
    return t.reshape(n, *([1] * (like.ndim - 1)))


def generator(seed: int | ExampleSeeds | None) -> torch.Generator | ExampleSeeds | None:
    """Where an attack's random draws come from: a CPU generator seeded with ``seed``; the
    per-example streams themselves when ``seed`` is :class:`ExampleSeeds` (evaluations
    seed each example by its global index); None (the global RNG) when seed is None."""
    if seed is None or isinstance(seed, ExampleSeeds):
        return seed
    return torch.Generator().manual_seed(int(seed))


__all__ = ["LOSSES", "TOLERANCE", "borrowed", "check_eps", "check_inputs", "check_labels",
           "check_positive_int", "check_result", "check_value", "check_values", "dlr",
           "dlr_targeted", "fooled", "generator", "input_grad", "loss_values", "margin",
           "model_device", "per_example", "prepare", "threat_model"]
