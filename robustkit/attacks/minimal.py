"""The smallest perturbation that makes the network say a chosen class."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_positive_int, check_result, check_values,
                                    per_example,
                                    prepare, threat_model)
from robustkit.attacks.cw import _cw_search
from robustkit.attacks.pgd import iterate
from robustkit.attacks.threat import flat_norm

Tensor = torch.Tensor


def minimal_targeted(model: nn.Module, x: Tensor, target: Tensor, *, norm: str = "l2",
                     steps: int = 200, search_steps: int = 10, max_eps: float = 1.0
                     ) -> tuple[Tensor, Tensor]:
    """Find, per example, a small perturbation that makes ``model`` predict ``target``.

    The course notes' "ostrich" question, after Szegedy et al. 2013, "Intriguing properties
    of neural networks" (arXiv 1312.6199), who search it under box constraints. Here:

    - ``norm="l2"``: targeted Carlini-Wagner L2 with its binary search over c
      (``steps`` Adam steps in all, ``search_steps`` stages).
    - ``norm="linf"``: per-example bisection on eps in [0, ``max_eps``], each probe a
      targeted PGD of ``steps // search_steps`` steps that stops once the target is reached
      and warm-starts from the last success.

    The search is non-convex, so the norms found are upper bounds on the true minimum.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        target: the class each image should be turned into (N,).
        norm: ``l2`` or ``linf``.
        steps: gradient steps in all.
        search_steps: binary-search stages.
        max_eps: the largest Linf radius tried.

    Returns:
        ``(x_adv, norms)``: images (N, C, H, W) in [0, 1] and the perturbation norm per
        example (N,) in ``norm``; ``inf`` (and the clean image) where the target was not
        reached.

    Example:
        >>> threes = torch.full((len(x),), 3)                                # doctest: +SKIP
        >>> x_adv, size = minimal_targeted(model, x, threes, norm="l2")      # doctest: +SKIP
    """
    tm = threat_model(norm, "minimal_targeted")
    check_values("minimal_targeted", norm=norm, steps=steps, search_steps=search_steps,
                 max_eps=max_eps)
    check_positive_int(search_steps, "minimal_targeted", "search_steps")
    check_positive_int(steps, "minimal_targeted", "steps", minimum=search_steps)
    if norm == "l2":
        x_adv, success = _cw_search(model, x, target, c=1.0, kappa=0.0, steps=steps, lr=0.05,
                                    binary_search_steps=search_steps, targeted=True,
                                    what="minimal_targeted")
    else:
        x_adv, success = _linf_bisection(model, x, target, steps // search_steps,
                                         search_steps, max_eps)
    x0 = x.detach().to(x_adv.device)
    norms = torch.where(success, tm.norm(x_adv - x0), torch.full_like(success, float("inf"),
                                                                        dtype=x_adv.dtype))
    return x_adv, norms


def _linf_bisection(model: nn.Module, x: Tensor, target: Tensor, probe_steps: int,
                    search_steps: int, max_eps: float) -> tuple[Tensor, Tensor]:
    x0, t0 = prepare(model, x, target, "minimal_targeted")
    n = len(x0)
    tm = threat_model("linf")
    lo = torch.zeros(n, device=x0.device)
    hi = torch.full((n,), float(max_eps), device=x0.device)
    best = x0.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    eps = hi.clone()  # first probe at max_eps: examples that fail there are out of reach
    with borrowed(model, "minimal_targeted", fast_layout=True):
        for _ in range(search_steps):
            e = per_example(eps, n, x0)
            # Warm start: the last success, projected into the smaller ball.
            start = tm.project(best, x0, e)
            x_adv, found = iterate(model, x0, t0, start, threat=tm, eps=e,
                                   alpha=e * 2.5 / max(probe_steps, 1), steps=probe_steps,
                                   targeted=True, early_stop=True)
            assert found is not None  # early_stop=True returns the success mask
            hit = found
            best[hit] = x_adv[hit]
            success |= hit
            hi = torch.where(hit, eps, hi)
            lo = torch.where(hit, lo, eps)
            eps = (lo + hi) / 2
    best = torch.where(success[:, None, None, None], best, x0)
    size = flat_norm(best - x0, float("inf"))
    return check_result(best, x0, eps=size, norm="linf", what="minimal_targeted"), success
