"""Threat models as three small functions: random start, step, projection.

An Lp threat model says which perturbations are allowed (the eps-ball around ``x``,
inside the [0, 1] image box) and how a gradient step moves inside it. FGSM is one Linf
step of size eps; BIM and PGD loop over the same pieces; L2 differs from Linf only here.

All functions take ``eps`` and ``alpha`` as tensors broadcastable to (N, 1, 1, 1), so each
example can have its own radius (robustness curves, minimal-perturbation searches).

Example:
    >>> tm = THREATS.get("linf")
    >>> x = torch.full((1, 1, 2, 2), 0.5)
    >>> tm.project(x + 1.0, x, torch.tensor(0.1)).max().item()
    0.6000000238418579
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustkit.core.seeding import ExampleSeeds
from robustkit.registry import Registry

Tensor = torch.Tensor
#: Where random draws come from: one generator for the batch, one per example, or the
#: global generator (None).
Draws = torch.Generator | ExampleSeeds | None


def flat_norm(t: Tensor, p: float) -> Tensor:
    """Per-example Lp norm of (N, ...) as (N,)."""
    return t.flatten(1).norm(p=p, dim=1)


def _view(t: Tensor, ref: Tensor) -> Tensor:
    """Per-example values (N,) as (N, 1, 1, 1), matching ``ref``'s rank."""
    return t.reshape(-1, *([1] * (ref.ndim - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball intersected with the [0, 1] box.

    Attributes:
        name: ``linf`` or ``l2``.
        p: the norm's order.
        unit_noise: ``(shape, like, generator) -> u``, uniform in the unit ball; the random
            start is ``x + eps * u`` projected (:meth:`random_start`). Drawing ``u`` once
            and scaling it gives the same start at every eps (robustness curves do that).
        step: ``(x_adv, grad, alpha) -> x_adv'``, steepest ascent of size alpha in this norm.
        project: ``(x_adv, x, eps) -> x_adv'``, the closest point of ball and box (for
            Linf exactly; for L2 the ball's projection followed by the box clip, which never
            increases the distance to ``x`` because ``x`` is inside the box).
    """

    name: str
    p: float
    unit_noise: Callable[[torch.Size, Tensor, Draws], Tensor]
    step: Callable[[Tensor, Tensor, Tensor], Tensor]
    project: Callable[[Tensor, Tensor, Tensor], Tensor]

    def random_start(self, x: Tensor, eps: Tensor, generator: Draws) -> Tensor:
        """A uniformly random point of the eps-ball around ``x`` (N, C, H, W), inside [0, 1]."""
        return self.start_from(x, self.unit_noise(x.shape, x, generator), eps)

    def start_from(self, x: Tensor, unit: Tensor, eps: Tensor) -> Tensor:
        """The start ``x + eps * unit`` for unit-ball noise ``unit``, in ball and box."""
        return self.project(x + eps * unit, x, eps)

    def norm(self, delta: Tensor) -> Tensor:
        """Per-example size of ``delta`` (N, ...) in this norm, shape (N,)."""
        return flat_norm(delta, self.p)


def _rand(shape: torch.Size, like: Tensor, generator: Draws) -> Tensor:
    # Drawn on the CPU generator, then moved: the same seed gives the same start on any device.
    if isinstance(generator, ExampleSeeds):  # each example from its own stream
        return generator.rand(shape, dtype=like.dtype).to(like.device)
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


def _randn(shape: torch.Size, like: Tensor, generator: Draws) -> Tensor:
    if isinstance(generator, ExampleSeeds):
        return generator.randn(shape, dtype=like.dtype).to(like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


# ----------------------------------------------------------------------------- Linf

def _linf_unit(shape: torch.Size, like: Tensor, gen: Draws) -> Tensor:
    return _rand(shape, like, gen).mul_(2).sub_(1)  # U(-1, 1): uniform in the unit Linf ball


def _linf_step(x_adv: Tensor, grad: Tensor, alpha: Tensor) -> Tensor:
    return x_adv + alpha * grad.sign()


def _linf_project(x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0, 1)


# ----------------------------------------------------------------------------- L2

def _l2_unit(shape: torch.Size, like: Tensor, gen: Draws) -> Tensor:
    # Uniform in the unit L2 ball: a Gaussian direction, radius U^(1/d).
    direction = _randn(shape, like, gen)
    direction = direction / _view(flat_norm(direction, 2).clamp_min(1e-12), direction)
    d = math.prod(shape[1:])
    radius = _rand(torch.Size([shape[0]]), like, gen).pow(1.0 / d)
    return direction * _view(radius, direction)


def _l2_step(x_adv: Tensor, grad: Tensor, alpha: Tensor) -> Tensor:
    g_norm = _view(flat_norm(grad, 2).clamp_min(1e-12), grad)
    return x_adv + alpha * grad / g_norm


def _l2_project(x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    delta = x_adv - x
    n = _view(flat_norm(delta, 2), delta)
    factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return (x + delta * factor).clamp_(0, 1)


THREATS: Registry[ThreatModel] = Registry("norm")
THREATS.register("linf")(ThreatModel("linf", float("inf"), _linf_unit, _linf_step, _linf_project))
THREATS.register("l2")(ThreatModel("l2", 2.0, _l2_unit, _l2_step, _l2_project))
