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
from robustkit.core.cost import charge
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
               loss: str, eot: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss (N,), grad (N, C, H, W), logits (N, K))`` at ``x_adv``, all detached; the
    gradient is taken with respect to the input only (the parameters' .grad is untouched).
    With ``eot`` > 1, loss, gradient and logits are averaged over that many forward and
    backward passes (expectation over transformation, for randomized models)."""
    x_adv = x_adv.detach().requires_grad_(True)
    parts = []
    for _ in range(eot):
        logits = model(x_adv).float()  # float32 loss also under mixed precision
        value = _losses(logits, y, target, loss)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        parts.append((value.detach(), grad, logits.detach()))
    if eot == 1:
        return parts[0]
    value, grad, logits = (torch.stack(t).mean(0) for t in zip(*parts, strict=True))
    return value, grad, logits


def _run(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, start: Tensor, *,
         threat: ThreatModel, eps: Tensor, steps: int, loss: str, rho: float,
         bill: tuple[int, Tensor], eot: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run (Algorithm 1) from ``start``; all tensors are one subset of the batch.

    An example leaves the run at its first fooling iterate (the algorithm's state of the
    others does not depend on it, so only the cost changes).

    Returns ``(x_out, hit, best_loss)``: per example its first fooling iterate if one fooled
    the model, else its highest-loss iterate; whether it was fooled (N,); the best loss (N,).
    ``bill`` is ``(n, rows)``: the attack's batch size and these examples' rows in it, for
    :func:`robustkit.core.cost.charge` (each pass of an example costs ``eot`` passes).
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    marks = set(checkpoints(steps))
    n = len(x)
    value, grad, logits = _loss_grad(model, start, y, target, loss, eot)
    charge(bill[0], rows=bill[1], forward=eot, backward=eot)
    x_out, best_out = start.clone(), value.clone()
    hit = fooled(logits, y, False)
    # The examples still running and their state, all indexed alike (A, ...).
    act = torch.arange(n, device=x.device)
    s: dict[str, Tensor] = {
        "x": x, "y": y, "eps": eps.expand(n, *eps.shape[1:]),
        "step": 2 * eps.expand(n, *eps.shape[1:]).clone(),  # (A, 1, 1, 1); eta^(0) = 2 eps
        "x_adv": start, "x_prev": start, "x_best": start, "g_best": grad, "grad": grad,
        "best": value.clone(), "value": value,
        "successes": torch.zeros(n, device=x.device),  # increases since the last checkpoint
        "best_at_mark": value.clone(), "halved_at_mark": torch.zeros_like(hit),
        **({"target": target} if target is not None else {})}

    def keep(mask: Tensor) -> None:
        nonlocal act
        act = act[mask]
        for key in s:
            s[key] = s[key][mask]

    keep(~hit)
    since = 0  # iterations since the last checkpoint
    for k in range(steps):
        if len(act) == 0:
            break
        z = threat.project(threat.step(s["x_adv"], s["grad"], s["step"]), s["x"], s["eps"])
        a = MOMENTUM if k > 0 else 1.0  # no momentum on the first step
        moved = threat.project(s["x_adv"] + a * (z - s["x_adv"])
                               + (1 - a) * (s["x_adv"] - s["x_prev"]), s["x"], s["eps"])
        s["x_prev"], s["x_adv"] = s["x_adv"], moved
        new, s["grad"], logits = _loss_grad(model, moved, s["y"], s.get("target"), loss, eot)
        charge(bill[0], rows=bill[1][act.to(bill[1].device)], forward=eot, backward=eot)
        s["successes"] += (new > s["value"]).float()
        s["value"] = new
        up = new > s["best"]
        s["x_best"] = torch.where(up.view(view), moved, s["x_best"])
        s["g_best"] = torch.where(up.view(view), s["grad"], s["g_best"])
        s["best"] = torch.where(up, new, s["best"])
        since += 1
        if k + 1 in marks:
            # Condition 1: too few increasing steps; condition 2: the step size was not
            # halved at the last checkpoint and the best loss did not improve since.
            halve = ((s["successes"] < rho * since)
                     | (~s["halved_at_mark"] & (s["best"] <= s["best_at_mark"])))
            s["step"] = torch.where(halve.view(view), s["step"] / 2, s["step"])
            s["x_adv"] = torch.where(halve.view(view), s["x_best"], s["x_adv"])
            s["grad"] = torch.where(halve.view(view), s["g_best"], s["grad"])
            s["halved_at_mark"], s["best_at_mark"] = halve, s["best"].clone()
            s["successes"] = torch.zeros_like(s["successes"])
            since = 0
        now = fooled(logits, s["y"], False)
        if now.any():
            done = act[now]
            x_out[done], hit[done], best_out[done] = moved[now], True, s["best"][now]
            keep(~now)
    x_out[act], best_out[act] = s["x_best"], s["best"]
    return x_out, hit, best_out


def _check(what: str, *, eps: float, loss: str, **options: Any) -> float:
    """Check apgd's options (refused with RobustkitError); returns eps as a float."""
    check_values(what, eps=eps, loss=loss, **options)
    if loss not in ("ce", "dlr"):
        raise RobustkitError(f"{what}: loss must be 'ce' or 'dlr', got {loss!r}")
    return check_eps(eps, what)


def apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
         steps: int = 100, loss: str = "ce", targeted: bool = False, target_classes: int = 9,
         restarts: int = 1, rho: float = 0.75, eot: int = 1,
         seed: int | ExampleSeeds | None = None, amp: bool = False) -> Tensor:
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
        eot: forward and backward passes averaged per step (expectation over
            transformation: Athalye, Carlini and Wagner 2018, arXiv 1802.00420), for models
            whose forward pass is random; AutoAttack's ``rand`` version uses 20.
        seed: seeds the random starts (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream).
        amp: forward and backward passes in mixed precision; iterates stay float32.

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1].

    Example:
        >>> x_adv = apgd(model, x, y, eps=0.3, loss="dlr", seed=0)             # doctest: +SKIP
        >>> x_adv = apgd(model, x, y, eps=0.3, loss="dlr", targeted=True)      # doctest: +SKIP
    """
    # long function: the docstring documents every option; the loop is short.
    what = "apgd"
    eps = _check(what, eps=eps, norm=norm, steps=steps, loss=loss, targeted=targeted,
                 target_classes=target_classes, restarts=restarts, rho=rho, eot=eot, seed=seed,
                 amp=amp)
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what)
    gen = generator(seed)
    e = per_example(eps, len(x0), x0)
    view = (-1,) + (1,) * (x0.ndim - 1)
    with borrowed(model, what, fast_layout=True, amp=amp):
        with torch.no_grad():
            clean = model(x0).float()  # (N, K)
        charge(len(x0), forward=1)
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
                                       eps=e[idx], steps=steps, loss=loss, rho=rho,
                                       bill=(len(x0), idx), eot=eot)
                take = hit | (value > best_loss[idx])
                best[idx] = torch.where(take.view(view), out, best[idx])
                best_loss[idx] = torch.where(take, value, best_loss[idx])
                done[idx] = hit
    return check_result(best, x0, eps=eps, norm=norm, what=what)


__all__ = ["apgd", "checkpoints"]
