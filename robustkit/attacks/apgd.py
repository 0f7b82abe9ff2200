"""Auto-PGD: PGD with momentum and a step size that adapts itself at checkpoints.

Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690 (Algorithm 1, section 3).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_result,
                                    check_values, dlr, dlr_targeted, fooled, generator,
                                    per_example, prepare, threat_model)
from robustkit.attacks.threat import ThreatModel
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: Momentum of the update (alpha in the paper).
MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which the step size is reconsidered: ``ceil(p_j * steps)`` with
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), up to ``steps``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The 1e-9 absorbs float error in the p_j (0.41 + 0.16 is 0.5700000000000001).
    marks = {math.ceil(q * steps - 1e-9) for q in p[1:]}
    return sorted(w for w in marks if 1 <= w <= steps)


def _losses(logits: Tensor, y: Tensor, target: Tensor | None, loss: str) -> Tensor:
    """Per-example loss (N,) to ascend: untargeted CE / DLR, or towards ``target``."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else dlr(logits, y)
    if loss == "ce":
        return -F.cross_entropy(logits, target, reduction="none")
    return dlr_targeted(logits, y, target)


def _loss_grad(model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None,
               loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss (N,), grad (N, C, H, W), logits (N, K))`` at ``x_adv``, all detached; the
    gradient is taken with respect to the input only (the parameters' .grad is untouched)."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv).float()  # float32 loss also under mixed precision
    value = _losses(logits, y, target, loss)
    (grad,) = torch.autograd.grad(value.sum(), x_adv)
    return value.detach(), grad, logits.detach()


def _run(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, start: Tensor, *,
         threat: ThreatModel, eps: Tensor, steps: int, loss: str, rho: float
         ) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run (Algorithm 1) from ``start``; all tensors are one subset of the batch.

    Returns ``(x_out, hit, best_loss)``: per example its last fooling iterate if any fooled
    the model, else its highest-loss iterate; whether it was fooled (N,); the best loss (N,).
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    marks = set(checkpoints(steps))
    step = 2 * eps.expand(len(x), *eps.shape[1:]).clone()  # (N, 1, 1, 1); eta^(0) = 2 eps
    value, grad, logits = _loss_grad(model, start, y, target, loss)
    x_adv, x_prev = start, start
    x_best, g_best, best = start, grad, value.clone()
    hit = fooled(logits, y, False)
    x_out = torch.where(hit.view(view), start, x_best)
    successes = torch.zeros(len(x), device=x.device)  # increases since the last checkpoint
    since = 0  # iterations since the last checkpoint
    best_at_mark, halved_at_mark = best.clone(), torch.zeros_like(hit)
    for k in range(steps):
        z = threat.project(threat.step(x_adv, grad, step), x, eps)
        a = MOMENTUM if k > 0 else 1.0  # no momentum on the first step
        moved = threat.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps)
        x_prev, x_adv = x_adv, moved
        new, grad, logits = _loss_grad(model, x_adv, y, target, loss)
        successes += (new > value).float()
        value = new
        now = fooled(logits, y, False)
        hit |= now
        x_out = torch.where(now.view(view), x_adv, x_out)
        up = new > best
        x_best = torch.where(up.view(view), x_adv, x_best)
        g_best = torch.where(up.view(view), grad, g_best)
        best = torch.where(up, new, best)
        since += 1
        if k + 1 in marks:
            # Condition 1: too few increasing steps; condition 2: the step size was not
            # halved at the last checkpoint and the best loss did not improve since.
            halve = (successes < rho * since) | (~halved_at_mark & (best <= best_at_mark))
            step = torch.where(halve.view(view), step / 2, step)
            x_adv = torch.where(halve.view(view), x_best, x_adv)  # restart from the best point
            grad = torch.where(halve.view(view), g_best, grad)
            halved_at_mark, best_at_mark = halve, best.clone()
            successes.zero_()
            since = 0
    x_out = torch.where(hit.view(view), x_out, x_best)
    return x_out, hit, best


def _check(what: str, *, eps: float, loss: str, **options: Any) -> float:
    """Check apgd's options (refused with RobustkitError); returns eps as a float."""
    check_values(what, eps=eps, loss=loss, **options)
    if loss not in ("ce", "dlr"):
        raise RobustkitError(f"{what}: loss must be 'ce' or 'dlr', got {loss!r}")
    return check_eps(eps, what)


def apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
         steps: int = 100, loss: str = "ce", targeted: bool = False, target_classes: int = 9,
         restarts: int = 1, rho: float = 0.75, seed: int | ExampleSeeds | None = None,
         amp: bool = False) -> Tensor:
    """Auto-PGD (APGD-CE, APGD-DLR and the targeted APGD-T), untargeted in every case:
    success is a prediction other than ``y``.

    Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", arXiv 2003.01690. The step size starts at ``2 * eps``
    and is halved at checkpoints where fewer than a fraction ``rho`` of the steps since the
    last checkpoint increased the loss, or where it was not halved before and the best loss
    did not improve; a halving restarts from the example's best point. Steps use momentum
    0.75. Each example keeps its best point: a fooling point if one fooled the model, else
    the point of highest loss. Restarts and target classes are only run on the examples
    still not fooled.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,) in [0, K).
        eps: radius of the ``norm`` ball in pixel units, >= 0.
        norm: ``linf`` or ``l2``.
        steps: gradient steps per run (>= 1); each run costs ``steps + 1`` forward and
            backward passes.
        loss: ``ce`` (cross-entropy) or ``dlr`` (difference of logits ratio, eq. 3; with
            ``targeted``, eq. 4), which is invariant to the logits' scale.
        targeted: APGD-T: one run per target, the ``target_classes`` other classes with the
            highest clean logits, each ascending the targeted loss.
        target_classes: how many targets (1 to K - 1) when ``targeted``.
        restarts: runs per target from independent random starts.
        rho: the fraction of increasing steps below which the step size is halved, in [0, 1].
        seed: seeds the random starts (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream).
        amp: forward and backward passes in mixed precision; iterates stay float32.

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1].

    Example:
        >>> x_adv = apgd(model, x, y, eps=0.3, loss="dlr", seed=0)             # doctest: +SKIP
        >>> x_adv = apgd(model, x, y, eps=0.3, loss="dlr", targeted=True)      # doctest: +SKIP
    """
    what = "apgd"
    eps = _check(what, eps=eps, norm=norm, steps=steps, loss=loss, targeted=targeted,
                 target_classes=target_classes, restarts=restarts, rho=rho, seed=seed, amp=amp)
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what)
    gen = generator(seed)
    e = per_example(eps, len(x0), x0)
    view = (-1,) + (1,) * (x0.ndim - 1)
    with borrowed(model, what, fast_layout=True, amp=amp):
        with torch.no_grad():
            clean = model(x0).float()  # (N, K)
        if targeted and target_classes > clean.shape[1] - 1:
            raise RobustkitError(f"{what}: target_classes must be at most {clean.shape[1] - 1} "
                                 f"(the other classes), got {target_classes}")
        # Targets: the other classes by clean logit, highest first (N, target_classes).
        ranked = clean.scatter(1, y0[:, None], float("-inf")).argsort(1, descending=True)
        best = x0.clone()
        done = fooled(clean, y0, False)
        best_loss = torch.full((len(x0),), float("-inf"), device=x0.device)
        for t in range(target_classes if targeted else 1):
            for _ in range(restarts):
                # Drawn for the whole batch, so a seed gives the same start to an example
                # whichever others are still being attacked.
                start = tm.random_start(x0, e, gen)
                idx = (~done).nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                target = ranked[idx, t] if targeted else None
                out, hit, value = _run(model, x0[idx], y0[idx], target, start[idx], threat=tm,
                                       eps=e[idx], steps=steps, loss=loss, rho=rho)
                take = hit | (value > best_loss[idx])
                best[idx] = torch.where(take.view(view), out, best[idx])
                best_loss[idx] = torch.where(take, value, best_loss[idx])
                done[idx] = hit
    return check_result(best, x0, eps=eps, norm=norm, what=what)


__all__ = ["apgd", "checkpoints"]
