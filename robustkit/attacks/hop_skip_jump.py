"""HopSkipJumpAttack: decision-based, from the model's predicted labels only.

Chen, Jordan and Wainwright 2020, "HopSkipJumpAttack: a query-efficient decision-based
attack", arXiv 1904.02144 (Algorithm 2, untargeted, L2 and Linf).

The attack reads only the argmax of the model's outputs (one *query* per image), never a
gradient or a score: every model call runs under ``torch.no_grad`` and is counted and
limited per example by :class:`robustkit.attacks.queries.Queries`. All examples still
being attacked advance together, each with its own step sizes and binary searches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_labels, check_positive_int,
                                    check_result, check_values, prepare, threat_model)
from robustkit.attacks.queries import Queries, draw_rows, draws_for
from robustkit.attacks.threat import ThreatModel
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor
Draws = torch.Generator | ExampleSeeds | None

#: Uniform-noise images tried per example to find a first adversarial point (ART's
#: ``init_size``); an example none of them fools is given up.
INIT_TRIALS = 100
#: The first binary search, between the image and its adversarial noise, stops at this
#: gap in the blending factor (the reference implementation's 0.001).
INIT_TOLERANCE = 1e-3
#: The gradient estimate's probes are sent in calls of about this many images at most.
ROWS_PER_CALL = 4096
#: The step-size search halves the step at most this often before giving up this round.
MAX_HALVINGS = 64


class _State:
    """Per-example state of the attack on a batch of N (all tensors indexed by example).

    Attributes:
        x, y: clean images (N, C, H, W) and labels (N,).
        cur: the current adversarial point (N, C, H, W), valid where ``found``.
        best, best_dist: the closest adversarial point so far and its distance (N,) (inf
            until found).
        post: the distance of the last point handed to the binary search (N,) (the
            reference's ``dist_post_update``, which sizes the gradient probes).
        found: a verified adversarial point exists (N,); done: its distance is <= eps.
    """

    def __init__(self, x: Tensor, y: Tensor, eps: float, tm: ThreatModel) -> None:
        n = len(x)
        self.x, self.y, self.eps, self.tm = x, y, eps, tm
        self.cur, self.best = x.clone(), x.clone()
        self.best_dist = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.post = torch.zeros(n, dtype=torch.float64, device=x.device)
        self.found = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.done = torch.zeros_like(self.found)

    def record(self, rows: Tensor, points: Tensor) -> None:
        """Verified adversarial ``points`` of examples ``rows`` become their current point;
        the closest so far is kept; an example within eps is done."""
        self.cur[rows] = points
        self.found[rows] = True
        dist = self.tm.norm(points - self.x[rows]).double()
        closer = dist < self.best_dist[rows]
        self.best[rows] = torch.where(closer.view(-1, 1, 1, 1), points, self.best[rows])
        self.best_dist[rows] = torch.minimum(dist, self.best_dist[rows])
        self.done[rows] = self.best_dist[rows] <= self.eps


def _adversarial(ask: Queries, images: Tensor, rows: Tensor, y: Tensor) -> Tensor:
    """Whether the model's label for each image (M,) differs from its example's label."""
    return ask(images, rows).argmax(1) != y[rows]


def _room(ask: Queries, rows: Tensor) -> Tensor:
    """Which of ``rows`` may still make a query (M,) bool, on ``rows``' device."""
    return (ask.left()[rows.cpu()] > 0).to(rows.device)


def _blend(x: Tensor, point: Tensor, alpha: Tensor, norm: str) -> Tensor:
    """The point at ``alpha`` (M,) of the way from ``x`` to ``point`` (L2: on the segment;
    Linf: ``point`` clipped to the Linf ball of radius alpha around ``x``)."""
    a = alpha.to(x.dtype).view(-1, 1, 1, 1)
    if norm == "l2":
        return (1 - a) * x + a * point
    return torch.minimum(torch.maximum(point, x - a), x + a)


def _initialize(ask: Queries, st: _State, draws: Draws) -> None:
    """Random uniform noise until it is adversarial (at most INIT_TRIALS per example), then
    a binary search on the segment from the image to it (the reference's ``initialize``)."""
    x = st.x
    noise = torch.zeros_like(x)
    trials = torch.zeros(len(x), dtype=torch.long, device=x.device)
    hit = st.found.clone()
    while True:
        rows = (~hit & ~st.done & (trials < INIT_TRIALS)).nonzero().squeeze(1)
        rows = rows[_room(ask, rows)]
        if len(rows) == 0:
            break
        u = draw_rows(draws, rows, tuple(x.shape[1:]), x)  # (M, C, H, W) in [0, 1)
        adv = _adversarial(ask, u, rows, st.y)
        noise[rows[adv]] = u[adv]
        hit[rows[adv]] = True
        trials[rows] += 1
    rows = (hit & ~st.found).nonzero().squeeze(1)
    if len(rows) == 0:
        return
    st.record(rows, noise[rows])
    high = torch.ones(len(rows), dtype=torch.float64, device=x.device)
    low = torch.zeros_like(high)
    while True:
        act = ((high - low > INIT_TOLERANCE) & _room(ask, rows) & ~st.done[rows]
               ).nonzero().squeeze(1)
        if len(act) == 0:
            break
        mid = (high[act] + low[act]) / 2
        a = mid.to(x.dtype).view(-1, 1, 1, 1)
        blended = (1 - a) * x[rows[act]] + a * noise[rows[act]]
        adv = _adversarial(ask, blended, rows[act], st.y)
        high[act] = torch.where(adv, mid, high[act])
        low[act] = torch.where(adv, low[act], mid)
        st.record(rows[act[adv]], blended[adv])


def _bisect(ask: Queries, st: _State, rows: Tensor, points: Tensor, norm: str,
            theta: float) -> None:
    """Binary search from adversarial ``points`` of examples ``rows`` back to the boundary
    (the reference's ``binary_search_batch``): L2 on the segment to the image, to a gap of
    theta in the blending factor; Linf over the radius, to min(theta * dist, theta)."""
    x = st.x[rows]
    dist = st.tm.norm(points - x).double()  # (M,)
    st.post[rows] = dist
    if norm == "l2":
        high, tol = torch.ones_like(dist), torch.full_like(dist, theta)
    else:
        high, tol = dist.clone(), torch.clamp(dist * theta, max=theta)
    low = torch.zeros_like(dist)
    while True:
        mid = (high + low) / 2
        # Also stop where the midpoint no longer differs from an end (float resolution).
        act = ((high - low > tol) & (mid > low) & (mid < high) & _room(ask, rows)
               & ~st.done[rows]).nonzero().squeeze(1)
        if len(act) == 0:
            break
        images = _blend(x[act], points[act], mid[act], norm)
        adv = _adversarial(ask, images, rows[act], st.y)
        high[act] = torch.where(adv, mid[act], high[act])
        low[act] = torch.where(adv, low[act], mid[act])
        st.record(rows[act[adv]], images[adv])


def _gradient(ask: Queries, st: _State, rows: Tensor, delta: Tensor, samples: int, norm: str,
              draws: Draws) -> Tensor:
    """The estimate of the boundary's normal at the current points of ``rows`` (section
    4.1, eq. 16 with the baseline of eq. 17): ``samples`` random unit directions (fewer
    where an example's budget is smaller), probed at distance ``delta`` (M,).

    Returns:
        Unit-L2-norm directions (M, C, H, W) towards the adversarial side.
    """
    x = st.cur[rows]
    shape = tuple(x.shape[1:])
    take = torch.clamp(ask.left()[rows.cpu()], max=samples).to(rows.device)  # (M,)
    out = torch.zeros_like(x)
    per_call = max(1, ROWS_PER_CALL // samples)
    for start in range(0, len(rows), per_call):
        part = slice(start, start + per_call)
        r, xp, k = rows[part], x[part], take[part]
        m = len(r)
        noise = draw_rows(draws, r, (samples, *shape), x, normal=norm == "l2")
        if norm == "linf":
            noise = 2 * noise - 1  # U(-1, 1), as in the reference
        noise = noise / noise.flatten(2).norm(dim=2).clamp_min(1e-12).view(m, samples, 1, 1, 1)
        d = delta[part].to(x.dtype).view(m, 1, 1, 1, 1)
        probes = (xp[:, None] + d * noise).clamp(0, 1)  # (m, samples, C, H, W)
        direction = (probes - xp[:, None]) / d
        valid = torch.arange(samples, device=x.device)[None] < k[:, None]  # (m, samples)
        owner = r[:, None].expand(m, samples)[valid]
        adv = _adversarial(ask, probes[valid], owner, st.y)
        f = torch.zeros(m, samples, dtype=x.dtype, device=x.device)
        f[valid] = 2 * adv.to(x.dtype) - 1
        mean = f.sum(1, keepdim=True) / k[:, None].to(x.dtype)
        # The baseline (eq. 17) only when the answers differ: if all agree, the mean
        # direction (with their sign) is the estimate, as in the reference.
        centred = torch.where(mean.abs() == 1, f, f - mean) * valid
        g = (centred.view(m, samples, 1, 1, 1) * direction).sum(1) / k.view(m, 1, 1, 1)
        out[part] = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(m, 1, 1, 1)
    return out


def _step(ask: Queries, st: _State, rows: Tensor, update: Tensor, t: int) -> Tensor:
    """The geometric step-size search (section 4.2): from distance / sqrt(t), halve until
    the step lands on the adversarial side. Returns which of ``rows`` moved (M,) bool;
    their new (verified) points are recorded."""
    x = st.cur[rows]
    size = (st.tm.norm(x - st.x[rows]).double() / math.sqrt(t)).to(x.dtype)  # (M,)
    moved = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
    for _ in range(MAX_HALVINGS):
        act = (~moved & _room(ask, rows)).nonzero().squeeze(1)
        if len(act) == 0:
            break
        images = (x[act] + size[act].view(-1, 1, 1, 1) * update[act]).clamp(0, 1)
        adv = _adversarial(ask, images, rows[act], st.y)
        st.record(rows[act[adv]], images[adv])
        moved[act[adv]] = True
        size[act] = torch.where(adv, size[act], size[act] / 2)
    return moved


def _check(what: str, *, eps: float, queries: int, gamma: float, init_evals: int,
           max_evals: int, **options: Any) -> float:
    """Check hop_skip_jump's options (refused with RobustkitError); returns eps."""
    check_values(what, eps=eps, **options)
    check_positive_int(queries, what, "queries")
    check_positive_int(init_evals, what, "init_evals")
    check_positive_int(max_evals, what, "max_evals")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) \
            or not math.isfinite(gamma) or gamma <= 0:
        raise RobustkitError(f"{what}: gamma must be a finite number > 0, got {gamma!r}")
    return check_eps(eps, what)


def hop_skip_jump(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "l2",
                  queries: int = 1000, steps: int = 40, gamma: float = 1.0,
                  init_evals: int = 100, max_evals: int = 10_000,
                  seed: int | ExampleSeeds | None = None) -> Tensor:
    """HopSkipJumpAttack (untargeted): walks along the decision boundary using labels only.

    Chen, Jordan and Wainwright 2020, "HopSkipJumpAttack: a query-efficient decision-based
    attack", arXiv 1904.02144. Decision-based: it reads only the predicted label (the
    argmax of the model's outputs; a label-only oracle's one-hot rows work, and no warning
    is given for outputs that look like probabilities), never a score or a gradient (every
    call runs under ``torch.no_grad``). Per example:

    1. a first adversarial point: uniform random noise (up to 100 tries), then a binary
       search on the segment from the image to it, then the binary search below;
    2. ``steps`` iterations t = 1, 2, ...: estimate the boundary's normal from
       ``min(init_evals * sqrt(t), max_evals)`` random probes at distance delta (0.1 at
       t = 1, then sqrt(d) theta and d theta times the last distance for L2 and Linf);
       step along it (Linf: its sign) from distance / sqrt(t), halving the step until it
       lands on the adversarial side (the geometric search); binary-search back to the
       boundary, to theta = gamma / d^(3/2) (L2) or gamma / d^2 (Linf), d = C H W.

    An example is *done*, and stops being queried, as soon as an adversarial point within
    ``eps`` is found (HSJ minimizes the perturbation from an adversarial start: reaching
    eps is success); also when its budget is spent. The clean image is query 1 (an example
    the model gets wrong already is done at distance 0). No example is queried more than
    ``queries`` times; each query is charged to its example with
    :func:`robustkit.core.cost.charge` (``queries=1``).

    Args:
        model: any ``nn.Module`` returning (N, K) outputs whose argmax is the label, for
            images in [0, 1] (it need not have parameters: a query oracle works).
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,) in [0, K).
        eps: the radius (``norm``, pixel units, >= 0) within which an adversarial point is
            returned.
        norm: ``l2`` or ``linf``.
        queries: the query budget per example (>= 1), the clean image's included.
        steps: HSJ iterations at most (>= 1); the budget usually ends the attack first.
        gamma: sets the binary searches' tolerance theta (> 0).
        init_evals, max_evals: probes of the gradient estimate at iteration 1, and at most.
        seed: seeds the random draws (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream, so its result does not depend on the batch).

    Returns:
        Images (N, C, H, W) in [0, 1]: per example the closest adversarial point found if
        its distance is at most eps, otherwise the clean image.

    Example:
        >>> x_adv = hop_skip_jump(model, x, y, eps=2.0, queries=1000, seed=0)    # doctest: +SKIP
        >>> x_adv = hop_skip_jump(oracle, x, y, eps=0.3, norm="linf")           # doctest: +SKIP
    """
    what = "hop_skip_jump"
    x0, points, dist = _search(model, x, y, what, eps=eps, norm=norm, queries=queries,
                               steps=steps, gamma=gamma, init_evals=init_evals,
                               max_evals=max_evals, seed=seed)
    within = dist <= eps  # (N,); False where nothing was found
    out = torch.where(within.view(-1, 1, 1, 1), points, x0)
    return check_result(out, x0, eps=eps, norm=norm, what=what)


def closest_adversarial(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.0,
                        norm: str = "l2", queries: int = 1000, steps: int = 40,
                        gamma: float = 1.0, init_evals: int = 100, max_evals: int = 10_000,
                        seed: int | ExampleSeeds | None = None) -> tuple[Tensor, Tensor]:
    """HopSkipJump's closest adversarial points and their distances, whatever their size.

    The search of :func:`hop_skip_jump` (same options and query accounting), which stops
    an example once it is within ``eps``; with ``eps=0`` (the default) every example
    spends its whole budget (or ``steps``) shrinking its perturbation.

    Returns:
        ``(points, distances)``: per example the closest adversarial point found
        (N, C, H, W) in [0, 1] (the clean image where none was found) and its ``norm``
        distance to ``x`` (N,) float64 (0 for an example misclassified already, inf where
        none was found).

    Example:
        >>> points, dist = closest_adversarial(model, x, y, queries=2000)   # doctest: +SKIP
        >>> dist.median()                                                    # doctest: +SKIP
    """
    x0, points, dist = _search(model, x, y, "closest_adversarial", eps=eps, norm=norm,
                               queries=queries, steps=steps, gamma=gamma,
                               init_evals=init_evals, max_evals=max_evals, seed=seed)
    return check_result(points, x0, eps=None, norm=None, what="closest_adversarial"), dist


def _search(model: nn.Module, x: Tensor, y: Tensor, what: str, *, eps: float, norm: str,
            queries: int, steps: int, gamma: float, init_evals: int, max_evals: int,
            seed: int | ExampleSeeds | None) -> tuple[Tensor, Tensor, Tensor]:
    """Check, prepare and run HSJ; returns ``(x0, best points, their distances)``."""
    eps = _check(what, eps=eps, norm=norm, queries=queries, steps=steps, gamma=gamma,
                 init_evals=init_evals, max_evals=max_evals, seed=seed)
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what, probe=False)
    n, d = len(x0), x0[0].numel()
    theta = gamma / (d * math.sqrt(d)) if norm == "l2" else gamma / d ** 2
    draws = draws_for(seed, n, what)
    st = _State(x0, y0, eps, tm)
    with borrowed(model, what, stacklevel=5):
        ask = Queries(model, n, queries, what, scores=False)
        every = torch.arange(n, device=x0.device)
        clean = ask(x0, every)  # (N, K); query 1 of every example
        check_labels(y0, clean.shape[1], what)
        wrong = (clean.argmax(1) != y0).nonzero().squeeze(1)
        st.record(wrong, x0[wrong])  # adversarial at distance 0: done
        _initialize(ask, st, draws)
        rows = (st.found & ~st.done).nonzero().squeeze(1)
        _bisect(ask, st, rows, st.cur[rows], norm, theta)
        for t in range(1, steps + 1):
            rows = (st.found & ~st.done).nonzero().squeeze(1)
            rows = rows[_room(ask, rows)]
            if len(rows) == 0:
                break
            post = st.post[rows]
            delta = (torch.full_like(post, 0.1) if t == 1 else
                     (math.sqrt(d) if norm == "l2" else d) * theta * post)
            samples = min(int(init_evals * math.sqrt(t)), max_evals)
            grad = _gradient(ask, st, rows, delta, samples, norm, draws)
            moved = _step(ask, st, rows, grad.sign() if norm == "linf" else grad, t)
            rows = rows[moved & ~st.done[rows]]
            _bisect(ask, st, rows, st.cur[rows], norm, theta)
    return x0, st.best, st.best_dist


__all__ = ["INIT_TRIALS", "closest_adversarial", "hop_skip_jump"]
