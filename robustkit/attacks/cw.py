"""Carlini-Wagner L2 with the binary search over the trade-off constant c."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_positive_int, check_result,
                                    check_values,
                                    margin, prepare)
from robustkit.errors import RobustkitError
from robustkit.core.cost import charge

Tensor = torch.Tensor

_NO_UPPER = 1e10  # "no successful c seen yet"


def cw_l2(model: nn.Module, x: Tensor, y: Tensor, *, c: float = 1.0, kappa: float = 0.0,
          steps: int = 100, lr: float = 0.01, binary_search_steps: int = 5,
          targeted: bool = False) -> Tensor:
    """C&W L2: minimize ``||delta||_2^2 + c * f(x + delta)`` with Adam, searching c.

    Carlini and Wagner 2017, "Towards Evaluating the Robustness of Neural Networks",
    arXiv 1608.04644. ``f`` is the margin loss ``max(Z_y - max_{i != y} Z_i, -kappa)``
    (targeted: ``max(max_{i != t} Z_i - Z_t, -kappa)``).

    The box [0, 1] is kept by projecting after each Adam step (the paper's "projected
    gradient descent" option, section V-B) rather than by its tanh change of variables:
    tanh saturates at pixels that are exactly 0 or 1, most of an MNIST digit, and Adam
    then needs hundreds of steps before such a pixel moves at all, so tanh-space C&W
    (torchattacks' included) leaves the background frozen and finds larger perturbations.

    ``steps`` is the total number of Adam steps, split evenly over ``binary_search_steps``
    stages. After each stage each example's c moves by binary search: halfway down
    towards the last failure when it succeeded, up (x10 until a success is seen, then
    halfway) when it failed. The optimization continues from the current iterate rather
    than restarting, so no step is wasted. Each example keeps its smallest successful
    perturbation.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,), or target labels when ``targeted``.
        c: the initial trade-off constant (> 0).
        kappa: required confidence margin (>= 0).
        steps: total optimization steps (>= binary_search_steps).
        lr: Adam's learning rate (pixel units per step, roughly).
        binary_search_steps: stages of the search over c.
        targeted: reach ``y`` instead of leaving it.

    Returns:
        Adversarial images (N, C, H, W) in [0, 1]; where no success was found, the
        clean image is returned (so the example counts as not fooled).

    Example:
        >>> x_adv = cw_l2(model, x, y, steps=100, binary_search_steps=5)   # doctest: +SKIP
    """
    x_adv, _ = _cw_search(model, x, y, c=c, kappa=kappa, steps=steps, lr=lr,
                          binary_search_steps=binary_search_steps, targeted=targeted,
                          what="cw_l2")
    return x_adv


def _cw_search(model: nn.Module, x: Tensor, y: Tensor, *, c: float, kappa: float, steps: int,
               lr: float, binary_search_steps: int, targeted: bool, what: str
               ) -> tuple[Tensor, Tensor]:
    """The C&W loop; returns the adversarial images and the per-example success mask."""
    check_values(what, c=c, kappa=kappa, steps=steps, lr=lr,
                 binary_search_steps=binary_search_steps, targeted=targeted)
    c = check_eps(c, what, "c")
    if c == 0:
        raise RobustkitError(f"{what}: c must be > 0")
    kappa = check_eps(kappa, what, "kappa")
    lr = check_eps(lr, what, "lr")
    check_positive_int(binary_search_steps, what, "binary_search_steps")
    check_positive_int(steps, what, "steps", minimum=binary_search_steps)
    x0, y0 = prepare(model, x, y, what)
    n = len(x0)
    dev = x0.device
    per_stage = math.ceil(steps / binary_search_steps)
    with borrowed(model, what, fast_layout=True):
        delta = torch.zeros_like(x0, requires_grad=True)  # (N, C, H, W)
        opt = torch.optim.Adam([delta], lr=lr)
        const = torch.full((n,), c, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), _NO_UPPER, device=dev)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best = x0.clone()
        done = 0
        for _ in range(binary_search_steps):
            stage_hit = torch.zeros(n, dtype=torch.bool, device=dev)
            for _ in range(min(per_stage, steps - done)):
                x_adv = x0 + delta  # in [0, 1]: delta is projected after every step
                logits = model(x_adv)
                l2sq = (x_adv - x0).flatten(1).pow(2).sum(1)  # (N,)
                m = margin(logits, y0)  # best other logit minus logit of y: > 0 leaves y
                # untargeted: push m above kappa; targeted: push it below -kappa
                f = (m + kappa).clamp_min(0) if targeted else (kappa - m).clamp_min(0)
                loss = (l2sq + const * f).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=[delta])
                charge(n, forward=1, backward=1)
                opt.step()
                with torch.no_grad():
                    delta.copy_((x0 + delta).clamp_(0, 1) - x0)  # back into the box
                    pred = logits.argmax(1)
                    hit = pred == y0 if targeted else pred != y0
                    better = hit & (l2sq < best_l2)
                    best_l2 = torch.where(better, l2sq, best_l2)
                    best[better] = x_adv[better].detach()
                    stage_hit |= hit
                done += 1
            with torch.no_grad():
                upper = torch.where(stage_hit, torch.minimum(upper, const), upper)
                lower = torch.where(stage_hit, lower, torch.maximum(lower, const))
                bounded = upper < _NO_UPPER
                const = torch.where(bounded, (lower + upper) / 2, const * 10)
    success = torch.isfinite(best_l2)
    return check_result(best, x0, eps=None, norm=None, what=what), success
