"""Iterative attacks in an Lp ball: BIM and PGD (with restarts), on the shared threat models."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_positive_int, check_result,
                                    check_values,
                                    fooled, generator, input_grad, loss_values, per_example,
                                    prepare,
                                    threat_model)
from robustkit.attacks.threat import ThreatModel
from robustkit.core.cost import charge
from robustkit.core.seeding import ExampleSeeds

Tensor = torch.Tensor


def iterate(model: nn.Module, x: Tensor, y: Tensor, x_start: Tensor, *, threat: ThreatModel,
            eps: Tensor, alpha: Tensor, steps: int, targeted: bool, early_stop: bool = False,
            loss: str = "ce", spent: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Projected gradient steps from ``x_start``; the loop that BIM, PGD and curves share.

    Args:
        x, y: clean images (N, C, H, W) and labels (N,), on the model's device.
        x_start: the first iterate, inside the ball.
        eps, alpha: per-example radius and step size, (N, 1, 1, 1).
        early_stop: freeze each example at the first iterate that fools the model and
            attack only the rest; then the success mask (N,) is returned too.
        spent: if given, an (N,) integer tensor increased by the forward+backward passes
            each example took (for cost accounting).

    Returns:
        ``(x_adv, success)``; ``success`` is None unless ``early_stop``.
    """
    x_adv = x_start
    if not early_stop:
        if spent is not None:
            spent += steps
        for _ in range(steps):
            grad, _ = input_grad(model, x_adv, y, targeted, loss)
            charge(len(x), forward=1, backward=1)
            x_adv = threat.project(threat.step(x_adv, grad, alpha), x, eps)
        return x_adv, None

    if x.device.type == "cuda":
        return _iterate_masked(model, x, y, x_start, threat=threat, eps=eps, alpha=alpha,
                               steps=steps, targeted=targeted, loss=loss, spent=spent)
    x_adv = x_adv.clone()
    success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.arange(len(x), device=x.device)  # indices still being attacked
    xa, xc, ya, ea, aa = x_adv, x, y, eps, alpha
    for _ in range(steps):
        grad, logits = input_grad(model, xa, ya, targeted, loss)
        charge(len(x), rows=active, forward=1, backward=1)
        if spent is not None:
            spent[active] += 1
        hit = fooled(logits, ya, targeted)  # judged at the current iterate, before stepping
        if hit.any():
            success[active[hit]] = True
            x_adv[active[hit]] = xa[hit]
            keep = ~hit
            active, xa, xc, ya, ea, aa, grad = (t[keep] for t in (active, xa, xc, ya, ea, aa, grad))
            if len(active) == 0:
                return x_adv, success
        xa = threat.project(threat.step(xa, grad, aa), xc, ea)
    x_adv[active] = xa
    with torch.no_grad():
        success[active] = fooled(model(xa), ya, targeted)
    charge(len(x), rows=active, forward=1)
    return x_adv, success


def _iterate_masked(model: nn.Module, x: Tensor, y: Tensor, x_start: Tensor, *,
                    threat: ThreatModel, eps: Tensor, alpha: Tensor, steps: int,
                    targeted: bool, loss: str, spent: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """Early stopping without a host sync (for GPUs): every example runs every step, and an
    example is frozen at its first fooling iterate by a mask instead of being dropped from
    the batch. The same result as the compacting loop, with no ``.any()`` or indexing by
    a data-dependent count in the step loop."""
    x_adv = x_start.clone()
    success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        grad, logits = input_grad(model, x_adv, y, targeted, loss)
        charge(len(x), forward=1, backward=1)  # every row runs, frozen or not
        if spent is not None:
            spent += (~success).long()
        success |= fooled(logits, y, targeted)  # judged at the current iterate
        moved = threat.project(threat.step(x_adv, grad, alpha), x, eps)
        x_adv = torch.where(success.view(-1, *([1] * (x.ndim - 1))), x_adv, moved)
    with torch.no_grad():
        success |= fooled(model(x_adv).float(), y, targeted)
    charge(len(x), forward=1)
    return x_adv, success


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float | None = None,
        steps: int = 40, norm: str = "linf", random_start: bool = True, restarts: int = 1,
        targeted: bool = False, seed: int | ExampleSeeds | None = None,
        amp: bool = False, loss: str = "ce") -> Tensor:
    """Projected gradient descent on the cross-entropy (or DLR, margin) loss, with restarts.

    Madry, Makelov, Schmidt, Tsipras and Vladu 2017, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", arXiv 1706.06083.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,), or target labels when ``targeted``.
        eps: radius of the ``norm`` ball in pixel units, >= 0.
        alpha: step size; default ``2.5 * eps / steps``.
        steps: gradient steps per restart.
        norm: ``linf`` or ``l2``.
        random_start: start at a uniform random point of the ball (else at ``x``).
        restarts: independent runs; each example keeps its worst case (fooled if any run
            fooled it, else the run with the highest loss).
        targeted: descend towards ``y``.
        seed: seeds the random starts (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream, so the result does not depend on the batch).
        amp: run the forward and backward passes in mixed precision (float16 on CUDA,
            bfloat16 on the CPU); the iterates stay float32, and an evaluation judges the
            final images in float32.
        loss: ``ce`` (cross-entropy), ``dlr`` (difference of logits ratio, Croce and Hein
            2020, eq. 3, invariant to the logits' scale) or ``margin`` (best other logit
            minus the true one). Targeted, the loss at the target ``y`` is descended.

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1].

    Example:
        >>> x_adv = pgd(model, x, y, eps=0.3, alpha=0.01, steps=40, seed=0)   # doctest: +SKIP
    """
    what = "pgd" if random_start is True else "bim"
    check_values(what, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                 restarts=restarts, targeted=targeted, seed=seed, amp=amp, loss=loss)
    eps = check_eps(eps, what)
    check_positive_int(steps, what, "steps")
    check_positive_int(restarts, what, "restarts")
    alpha = 2.5 * eps / steps if alpha is None else check_eps(alpha, what, "alpha")
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what)
    gen = generator(seed)
    e = per_example(eps, len(x0), x0)
    a = per_example(alpha, len(x0), x0)
    with borrowed(model, what, fast_layout=True, amp=amp):
        best = best_loss = best_hit = x0  # placeholders; the first run replaces them
        for run in range(restarts):
            start = tm.random_start(x0, e, gen) if random_start else x0
            x_adv, _ = iterate(model, x0, y0, start, threat=tm, eps=e, alpha=a, steps=steps,
                               targeted=targeted, loss=loss)
            if restarts == 1:
                best = x_adv
                break
            with torch.no_grad():
                logits = model(x_adv).float()
            charge(len(x0), forward=1)
            hit = fooled(logits, y0, targeted)
            value = loss_values(logits, y0, loss) * (-1 if targeted else 1)
            if run == 0:
                best, best_loss, best_hit = x_adv, value, hit
                continue
            # Take the new run where it fools and the old did not, or where neither
            # fools and it has the higher loss.
            take = (hit & ~best_hit) | ((hit == best_hit) & ~best_hit & (value > best_loss))
            best = torch.where(take[:, None, None, None], x_adv, best)
            best_loss = torch.where(take, value, best_loss)
            best_hit = best_hit | hit
    return check_result(best, x0, eps=eps, norm=norm, what=what)


def bim(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float | None = None,
        steps: int = 10, norm: str = "linf", targeted: bool = False, amp: bool = False,
        loss: str = "ce") -> Tensor:
    """Basic iterative method: PGD from the clean image, without random start.

    Kurakin, Goodfellow and Bengio 2016, "Adversarial Examples in the Physical World",
    arXiv 1607.02533.

    Args:
        See :func:`pgd`; ``alpha`` defaults to ``2.5 * eps / steps``.

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1].

    Example:
        >>> x_adv = bim(model, x, y, eps=0.1, steps=10)   # doctest: +SKIP
    """
    return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=False,
               restarts=1, targeted=targeted, amp=amp, loss=loss)
