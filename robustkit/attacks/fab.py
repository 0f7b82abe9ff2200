"""FAB: the Fast Adaptive Boundary attack, minimal Linf or L2 perturbations.

Croce and Hein 2020, "Minimally distorted Adversarial Examples with a Fast Adaptive
Boundary Attack", ICML 2020, arXiv 1907.02044 (Algorithm 1); its targeted version FAB-T as
AutoAttack runs it (Croce and Hein 2020, arXiv 2003.01690, section 4).

Each step linearizes the classifier at the iterate: the boundary between the true class
``y`` and a class ``s`` is approximated by the hyperplane
``{z : f_s(x) - f_y(x) + <grad(f_s - f_y)(x), z - x> = 0}``. Both the iterate and the
original image are projected onto that hyperplane intersected with the image box [0, 1]
(:func:`project_to_hyperplane`), the two projections are blended (the original image's
weighs more when the iterate lies farther from the boundary than it does), and every
adversarial iterate is pulled back towards the original image (factor ``beta``), so the
search tracks the boundary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_result, check_values,
                                    generator, prepare, threat_model)
from robustkit.attacks.threat import Draws, ThreatModel
from robustkit.core.cost import charge
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: Smallest step norm in the blending weight (the reference's 1e-8): no division by zero
#: when the iterate already lies on the hyperplane.
MIN_STEP = 1e-8


def project_to_hyperplane(t: Tensor, w: Tensor, r: Tensor, norm: str) -> Tensor:
    """The smallest step ``d`` (Linf or L2) with ``<w, d> = r`` and ``t + d`` in [0, 1].

    The projection of FAB (Croce and Hein 2020, arXiv 1907.02044, section 3.1), done
    exactly and batched. Flipping the signs of ``w`` and ``r`` so that ``r >= 0``, the
    optimal step is ``d_i = sign(w_i) * min(s * v_i, cap_i)`` for one scalar ``s >= 0``, where
    ``cap_i`` is how far pixel i may move in the helpful direction before leaving [0, 1],
    and ``v_i = 1`` for Linf (every free pixel moves by the radius ``s``) or ``|w_i|`` for L2
    (the KKT conditions of the box-constrained least-norm problem: ``d = clip(s w)``). The
    progress ``<w, d>`` is piecewise linear and nondecreasing in ``s``, with kinks where
    pixels saturate (``s = cap_i / v_i``). The paper finds the segment holding ``r`` by
    bisection over the sorted kinks; here every kink's progress is computed at once with
    cumulative sums, the segment is the first kink reaching ``r``, and ``s`` is solved
    linearly in it (the same point, O(D log D) per row for the sort). When the box cannot
    reach the hyperplane, the step goes to the box corner that gets closest to it.

    Args:
        t: points (M, D) in [0, 1].
        w: hyperplane normals (M, D).
        r: required change ``<w, d>`` (M,); the hyperplane is ``<w, z> = <w, t> + r``.
        norm: ``linf`` or ``l2``.

    Returns:
        Steps ``d`` (M, D) in the dtype of ``t`` (computed in at least float32).

    Example:
        >>> t = torch.full((1, 3), 0.5)
        >>> project_to_hyperplane(t, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.2]),
        ...                       "l2").tolist()
        [[0.20000000298023224, 0.0, 0.0]]
    """
    work = torch.promote_types(t.dtype, torch.float32)
    t, w, r = t.to(work), w.to(work), r.to(work)
    w = torch.where(r[:, None] < 0, -w, w)  # now every row needs <w, d> = |r| >= 0
    r = r.abs()
    a = w.abs()  # (M, D)
    cap = torch.where(w > 0, 1 - t, t).clamp_min(0)  # (M, D) room in the helpful direction
    v = torch.ones_like(a) if norm == "linf" else a
    kink = torch.where(v > 0, cap / v.clamp_min(torch.finfo(work).tiny), math.inf)  # (M, D)
    kink, order = kink.sort(1)
    a_s, cap_s, v_s = a.gather(1, order), cap.gather(1, order), v.gather(1, order)
    zero = torch.zeros_like(r[:, None])
    saturated = (a_s * cap_s).cumsum(1)  # progress of pixels 0..k, all saturated
    free = (a_s * v_s).flip(1).cumsum(1).flip(1)  # slope of pixels k.. (still free)
    free_after = torch.cat([free[:, 1:], zero], 1)
    # Progress at each kink (pixels after the last finite kink have w = 0: no slope left).
    reached = torch.where(free_after > 0, saturated + kink * free_after, saturated)
    k = (reached < r[:, None]).sum(1, keepdim=True)  # the first kink reaching r (M, 1)
    feasible = k < t.shape[1]
    k = k.clamp_max(t.shape[1] - 1)
    before = torch.cat([zero, saturated[:, :-1]], 1).gather(1, k)  # saturated before kink k
    s = (r[:, None] - before) / free.gather(1, k).clamp_min(torch.finfo(work).tiny)  # (M, 1)
    size = torch.where(feasible, torch.minimum(s.clamp_min(0) * v, cap), cap)
    return (torch.sign(w) * size).to(t.dtype)


def _linearize(model: nn.Module, x1: Tensor, y: Tensor, target: Tensor | None, norm: str,
               bill: tuple[int, Tensor]) -> tuple[Tensor, Tensor]:
    """The boundary to step towards at ``x1`` (M, C, H, W): ``(f (M,), g (M, D))`` with
    ``f = z_s - z_y`` and ``g`` its input gradient, flattened.

    Targeted: ``s = target``, one backward pass. Untargeted: every other class (K - 1
    backward passes), and ``s`` is the one whose linearized boundary is closest, distance
    ``|f| / ||g||_q`` with ``q`` the dual norm (L1 for Linf, L2 for L2).
    """
    m = len(x1)
    x1 = x1.detach().requires_grad_(True)
    logits = model(x1).to(x1.dtype)  # (M, K); iterates' precision also under autocast
    rows = torch.arange(m, device=x1.device)
    z_y = logits[rows, y]
    if target is not None:
        f = logits[rows, target] - z_y
        (g,) = torch.autograd.grad(f.sum(), x1)
        charge(bill[0], rows=bill[1], forward=1, backward=1)
        return f.detach(), g.reshape(m, -1)
    k = logits.shape[1]
    # The closest boundary so far, kept as the classes go by: memory O(M D), not the
    # O(M K D) of the whole Jacobian (which would not fit for ImageNet's 1000 classes).
    near = torch.full((m,), math.inf, dtype=x1.dtype, device=x1.device)
    f_near, g_near = torch.zeros_like(near), torch.zeros_like(x1.reshape(m, -1))
    for j in range(1, k):  # the other classes, (y + j) mod K
        f = logits[rows, (y + j) % k] - z_y
        (g,) = torch.autograd.grad(f.sum(), x1, retain_graph=j < k - 1)
        f, g = f.detach(), g.reshape(m, -1)
        dual = g.abs().sum(1) if norm == "linf" else g.norm(dim=1)
        dist = f.abs() / (dual + 1e-12)
        take = dist < near
        near = torch.where(take, dist, near)
        f_near = torch.where(take, f, f_near)
        g_near = torch.where(take[:, None], g, g_near)
    charge(bill[0], rows=bill[1], forward=1, backward=k - 1)
    return f_near, g_near


def _run(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, start: Tensor, *,
         threat: ThreatModel, steps: int, alpha_max: float, eta: float, beta: float,
         bill: tuple[int, Tensor]) -> tuple[Tensor, Tensor]:
    """One FAB run (Algorithm 1) from ``start``; all tensors are one subset of the batch.

    Returns ``(x_best, size)``: per example the adversarial iterate of smallest norm and
    that norm (M,), or the clean image and ``inf`` when no iterate fooled the model.
    ``bill`` is ``(n, rows)``: the attack's batch size and these examples' rows in it.
    Each step costs one gradient (:func:`_linearize`) and one forward pass.
    """
    m = len(x)
    view = (-1,) + (1,) * (x.ndim - 1)
    x_flat = x.reshape(m, -1)  # (M, D)
    x1 = start.clone()
    best, size = x.clone(), torch.full((m,), math.inf, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        f, g = _linearize(model, x1, y, target, threat.name, bill)
        x1_flat = x1.reshape(m, -1)
        # Linearized boundary {z: f + <g, z - x1> = 0}: from x1 it needs <g, d> = -f, from
        # the original image <g, d> = -f - <g, x - x1>. Both are projected in one batch.
        r0 = -f - (g * (x_flat - x1_flat)).sum(1)
        d = project_to_hyperplane(torch.cat([x1_flat, x_flat]), torch.cat([g, g]),
                                  torch.cat([-f, r0]), threat.name)
        d1, d0 = d[:m].reshape(x.shape), d[m:].reshape(x.shape)
        n1 = threat.norm(d1).clamp_min(MIN_STEP)
        n0 = threat.norm(d0).clamp_min(MIN_STEP)
        # The farther the iterate lies from the boundary than the original image does,
        # the more weight (up to alpha_max) goes to the original image's projection.
        alpha = (n1 / (n1 + n0)).clamp(0, alpha_max).view(view)
        x1 = ((1 - alpha) * (x1 + eta * d1) + alpha * (x + eta * d0)).clamp(0, 1)
        with torch.no_grad():
            hit = model(x1).argmax(1) != y  # (M,)
        charge(bill[0], rows=bill[1], forward=1)
        now = threat.norm(x1 - x)
        better = hit & (now < size)
        best = torch.where(better.view(view), x1, best)
        size = torch.where(better, now, size)
        # Backward step: an adversarial iterate is pulled towards the original image.
        x1 = torch.where(hit.view(view), x + beta * (x1 - x), x1)
    return best, size


def _random_start(threat: ThreatModel, x: Tensor, radius: float, gen: Draws) -> Tensor:
    """A random point on the sphere of ``radius`` around ``x`` (N, C, H, W), clipped to
    [0, 1]: the reference's restart (its radius is half of min(eps, best norm found))."""
    unit = threat.unit_noise(x.shape, x, gen)
    length = threat.norm(unit).clamp_min(1e-12).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x + radius * unit / length).clamp(0, 1)


def _check(what: str, *, eps: float, alpha_max: Any, eta: Any, beta: Any,
           **options: Any) -> float:
    """Check fab's options (refused with RobustkitError); returns eps as a float."""
    check_values(what, eps=eps, **options)

    def number(value: Any) -> bool:
        return (not isinstance(value, bool) and isinstance(value, (int, float))
                and math.isfinite(value))

    if not (number(alpha_max) and 0 <= alpha_max <= 1):
        raise RobustkitError(f"{what}: alpha_max must be a number in [0, 1], got {alpha_max!r}")
    if not (number(eta) and eta >= 1):
        raise RobustkitError(f"{what}: eta (the overshoot) must be a finite number >= 1, "
                             f"got {eta!r}")
    if not (number(beta) and 0 < beta < 1):
        raise RobustkitError(f"{what}: beta (the backward step) must be a number in (0, 1), "
                             f"got {beta!r}")
    return check_eps(eps, what)


def fab(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
        steps: int = 100, targeted: bool = True, target_classes: int = 9, restarts: int = 1,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        seed: int | ExampleSeeds | None = None, amp: bool = False) -> Tensor:
    """FAB, the Fast Adaptive Boundary attack (FAB-T by default), Linf or L2: success is a
    prediction other than ``y`` by a perturbation of norm at most ``eps``.

    Croce and Hein 2020, "Minimally distorted Adversarial Examples with a Fast Adaptive
    Boundary Attack", arXiv 1907.02044. Each step projects the iterate and the original
    image onto the linearized boundary intersected with [0, 1]
    (:func:`project_to_hyperplane`), moves to ``(1 - a)(x_k + eta d_k) + a (x + eta d)``
    with ``a = min(|d_k| / (|d_k| + |d|), alpha_max)``, and pulls every adversarial iterate
    back to ``x + beta (x_k - x)``; the smallest adversarial iterate is kept. FAB-T
    (``targeted``, as AutoAttack runs it) uses, per run, the boundary between ``y`` and one
    target: the ``target_classes`` other classes with the highest clean logits, in turn;
    untargeted FAB the closest linearized boundary of all classes at every step. The first
    run per target starts at ``x``, later restarts at a random point at distance eps / 2.

    An example is attacked only while correctly classified and not fooled within eps: later
    targets and restarts run on the others only. Its result is its smallest adversarial
    point if that lies within eps, else the clean image (an example misclassified already
    keeps its clean image). Each step costs one forward and one backward pass (untargeted:
    K - 1 backward passes) and one more forward pass.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,) in [0, K).
        eps: radius of the ``norm`` ball in pixel units, >= 0: the bound for success, and
            the scale of the random restarts.
        norm: ``linf`` or ``l2``.
        steps: steps per run (>= 1).
        targeted: FAB-T, one run per target class (default, as in AutoAttack); else
            untargeted FAB.
        target_classes: how many targets (1 to K - 1) when ``targeted``.
        restarts: runs per target (the first from ``x``, the others from random starts).
        alpha_max: the largest weight of the original image's projection, in [0, 1].
        eta: overshoot of each projection, >= 1.
        beta: backward step towards ``x`` after an adversarial iterate, in (0, 1).
        seed: seeds the random restarts (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream).
        amp: forward and backward passes in mixed precision; iterates stay in the
            images' dtype.

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1].

    Example:
        >>> x_adv = fab(model, x, y, eps=0.3, seed=0)                          # doctest: +SKIP
        >>> x_adv = fab(model, x, y, eps=1.5, norm="l2", targeted=False)       # doctest: +SKIP
    """
    # long function: 14 arguments, each documented above; the body is 40 lines.
    what = "fab"
    eps = _check(what, eps=eps, norm=norm, steps=steps, targeted=targeted,
                 target_classes=target_classes, restarts=restarts, alpha_max=alpha_max,
                 eta=eta, beta=beta, seed=seed, amp=amp)
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what)
    n = len(x0)
    gen = generator(seed)
    view = (-1,) + (1,) * (x0.ndim - 1)
    with borrowed(model, what, fast_layout=True, amp=amp):
        with torch.no_grad():
            clean = model(x0).float()  # (N, K)
        charge(n, forward=1)
        if targeted and target_classes > clean.shape[1] - 1:
            raise RobustkitError(f"{what}: target_classes must be at most {clean.shape[1] - 1} "
                                 f"(the other classes), got {target_classes}")
        # Targets: the other classes by clean logit, highest first (N, K).
        ranked = clean.scatter(1, y0[:, None], float("-inf")).argsort(1, descending=True)
        best = x0.clone()
        size = torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device)
        done = clean.argmax(1) != y0  # misclassified already: nothing to find
        for t in range(target_classes if targeted else 1):
            for r in range(restarts):
                # Drawn for the whole batch, so a seed gives the same start to an example
                # whichever others are still being attacked.
                start = x0 if r == 0 else _random_start(tm, x0, eps / 2, gen)
                idx = (~done).nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                target = ranked[idx, t] if targeted else None
                out, found = _run(model, x0[idx], y0[idx], target, start[idx], threat=tm,
                                  steps=steps, alpha_max=alpha_max, eta=eta, beta=beta,
                                  bill=(n, idx))
                better = found < size[idx]
                best[idx] = torch.where(better.view(view), out, best[idx])
                size[idx] = torch.where(better, found, size[idx])
                done[idx] = done[idx] | (found <= eps)
    x_adv = torch.where((size <= eps).view(view), best, x0)
    return check_result(x_adv, x0, eps=eps, norm=norm, what=what)


__all__ = ["fab", "project_to_hyperplane"]
