"""Square Attack: score-based random search in the Linf or L2 ball, by square updates.

Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search", arXiv 1912.00049 (Algorithm 1; the Linf
update of section 3.1 and the L2 update of section 3.2).

The attack reads only the model's outputs (one *query* per image), never a gradient: every
model call runs under ``torch.no_grad``, is charged with
:func:`robustkit.core.cost.charge` (``queries=1`` per image) and is refused before it runs
if it would take an example past its budget (:class:`robustkit.attacks.queries.Queries`,
which the decision-based :func:`robustkit.attacks.hop_skip_jump.hop_skip_jump` shares).
"""

from __future__ import annotations

import bisect
import functools
import math
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_labels, check_positive_int,
                                    check_result, check_values, fooled, margin, prepare,
                                    threat_model)
from robustkit.attacks.queries import Queries, draw_rows, draws_for
from robustkit.attacks.threat import ThreatModel, flat_norm
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: Iterations (on the paper's 10,000-query scale) after which p is halved once more.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i: int, budget: int, p_init: float) -> float:
    """The fraction p of the image a square covers at iteration ``i`` (0-based) of a run of
    ``budget`` queries: ``p_init`` halved after iterations 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 of the paper's 10,000-query scale, onto which ``i`` is rescaled (as the
    reference implementation does when the budget differs)."""
    it = int(i / budget * 10000)
    return p_init / 2 ** bisect.bisect_left(P_HALVINGS, it)


def _rectangle(a: int, b: int) -> Tensor:
    """Concentric rectangles on an (a, b) grid: cell weight sum_{k >= m} 1 / (k + 1)^2,
    m the cell's Chebyshev distance from the centre (a // 2, b // 2); unit L2 norm."""
    if a == 0:
        return torch.zeros(0, b, dtype=torch.float64)
    rings = max(a // 2, b // 2) + 1
    weight = 1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2  # (rings,)
    tail = weight.flip(0).cumsum(0).flip(0)  # tail[m] = sum_{k >= m} weight[k]
    i = (torch.arange(a) - a // 2).abs()[:, None]
    j = (torch.arange(b) - b // 2).abs()[None, :]
    out = tail[torch.maximum(i, j)]  # (a, b)
    return out / out.norm()


@functools.lru_cache(maxsize=64)
def eta(s: int) -> Tensor:
    """The L2 update's pattern (s, s) (section 3.2): concentric rectangles of weight +1 on
    the top half and -1 on the bottom half, with unit L2 norm (float64; cached, so callers
    must not write to it)."""
    out = torch.cat([_rectangle(s // 2, s), -_rectangle(s - s // 2, s)])
    return out / out.norm()


def _shifts(v: Tensor, s: int, size: int, dtype: torch.dtype) -> Tensor:
    """One-hot placement matrices (M, size, s): entry [m, i, k] is 1 where i = v[m] + k."""
    i = torch.arange(size, device=v.device)[None, :, None] - v[:, None, None]
    return (i == torch.arange(s, device=v.device)[None, None, :]).to(dtype)


def _window(vh: Tensor, vw: Tensor, s: int, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """Masks (M, 1, H, W), 1 on the s x s squares with top-left corners (vh, vw), (M,) each."""
    rows = _shifts(vh, s, h, dtype).sum(2)  # (M, H)
    cols = _shifts(vw, s, w, dtype).sum(2)  # (M, W)
    return (rows[:, :, None] * cols[:, None, :])[:, None]


def _place(pattern: Tensor, vh: Tensor, vw: Tensor, h: int, w: int) -> Tensor:
    """Patterns (M, s, s) placed at (vh, vw) on zero images (M, H, W)."""
    s = pattern.shape[-1]
    return _shifts(vh, s, h, pattern.dtype) @ pattern \
        @ _shifts(vw, s, w, pattern.dtype).transpose(1, 2)


def _corner(u: Tensor, room: int) -> Tensor:
    """A uniformly random position in [0, room) from uniform draws ``u`` (M,).

    Squares of side s get ``room = H - s + 1``: every corner in {0, ..., H - s}, as in the
    paper. The reference implementation draws from {0, ..., H - s - 1} and so never changes
    the last row and column with a square (measured: 0.5 to 2 points of robust accuracy
    on an MNIST MLP at Linf eps 0.1, in this version's favour; tests/test_square.py).
    """
    return (u.double() * room).long().clamp_(0, room - 1)


def _signs(u: Tensor) -> Tensor:
    """Random signs +-1 from uniform draws."""
    return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)


def _radius(eps: float, like: Tensor) -> Tensor:
    return torch.as_tensor(eps, dtype=like.dtype, device=like.device)


def _unit(delta: Tensor) -> Tensor:
    """``delta`` (M, C, H, W) scaled to unit L2 norm per example (zero stays zero)."""
    return delta / (flat_norm(delta, 2) + 1e-12).view(-1, 1, 1, 1)


def _init_linf(x: Tensor, eps: float, tm: ThreatModel, u: Tensor) -> Tensor:
    """Vertical stripes: each column of each channel at +-eps (section 3.1)."""
    m, c, _, w = x.shape
    return tm.project(x + eps * _signs(u).view(m, c, 1, w), x, _radius(eps, x))


def _init_l2_draws(x: Tensor) -> int:
    c, h, w = x.shape[1:]
    s = _block(h, w)
    return len(_grid(h, s)) * len(_grid(w, s)) * (1 + c)


def _block(h: int, w: int) -> int:
    """The side of the L2 start's square blocks: a fifth of the shorter side, >= 1."""
    return max(min(h, w) // 5, 1)


def _grid(size: int, s: int) -> list[int]:
    """Offsets of the L2 start's blocks of side ``s`` along a side of ``size`` pixels: up
    to 5 blocks, centred."""
    k = min(5, size // s)
    start = (size - k * s) // 2
    return [start + i * s for i in range(k)]


def _init_l2(x: Tensor, eps: float, u: Tensor) -> Tensor:
    """The L2 start (section 3.2): a 5 x 5 grid of squares, each with the pattern ``eta``
    (transposed at random) times a random sign per channel, scaled to norm eps."""
    m, c, h, w = x.shape
    s = _block(h, w)
    rows, cols = _grid(h, s), _grid(w, s)
    u = u.view(m, len(rows) * len(cols), 1 + c)
    pattern = eta(s).to(x.device, x.dtype)
    delta = torch.zeros_like(x)
    for b, (r, q) in enumerate((r, q) for r in rows for q in cols):
        flip = (u[:, b, 0] < 0.5).view(m, 1, 1)
        block = torch.where(flip, pattern.t(), pattern)  # (M, s, s)
        delta[:, :, r:r + s, q:q + s] += block[:, None] * _signs(u[:, b, 1:]).view(m, c, 1, 1)
    return (x + _unit(delta) * eps).clamp(0, 1)


def _step_linf(x: Tensor, x_best: Tensor, eps: float, tm: ThreatModel, p: float,
               u: Tensor) -> Tensor:
    """A square of side sqrt(p * H * W) at a random place set to x +- eps, one random sign
    per channel (section 3.1). ``u`` (M, 2 + C): uniform draws."""
    m, c, h, w = x.shape
    s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
    vh, vw = _corner(u[:, 0], h - s + 1), _corner(u[:, 1], w - s + 1)
    change = 2 * eps * _signs(u[:, 2:]).view(m, c, 1, 1) * _window(vh, vw, s, h, w, x.dtype)
    return tm.project(x_best + change, x, _radius(eps, x))


def _step_l2(x: Tensor, x_best: Tensor, eps: float, p: float, u: Tensor) -> Tensor:
    """The centred square update (section 3.2). ``u`` (M, 5 + C): uniform draws.

    The perturbation is moved out of a second random square into the first, where the
    new pattern is added to the old one; the L2 budget left over (eps^2 - ||delta||^2)
    is spent there too, and the whole perturbation is rescaled to norm eps.
    """
    m, c, h, w = x.shape
    s = max(int(round(math.sqrt(p * h * w))), 3)
    s = min(s + 1 if s % 2 == 0 else s, h, w)  # odd side, inside the image
    vh, vw = _corner(u[:, 0], h - s + 1), _corner(u[:, 1], w - s + 1)
    vh2, vw2 = _corner(u[:, 2], h - s + 1), _corner(u[:, 3], w - s + 1)
    first = _window(vh, vw, s, h, w, x.dtype)  # (M, 1, H, W)
    both = torch.maximum(first, _window(vh2, vw2, s, h, w, x.dtype))
    delta = x_best - x  # (M, C, H, W)
    in_first = delta * first
    first_norm = in_first.square().sum((2, 3), keepdim=True).sqrt()  # (M, C, 1, 1)
    total = flat_norm(delta, 2).view(m, 1, 1, 1)
    windows = flat_norm(delta * both, 2).view(m, 1, 1, 1)
    pattern = eta(s).to(x.device, x.dtype)
    flip = (u[:, 4] < 0.5).view(m, 1, 1)
    placed = _place(torch.where(flip, pattern.t(), pattern), vh, vw, h, w)  # (M, H, W)
    new = placed[:, None] * _signs(u[:, 5:]).view(m, c, 1, 1) + in_first / (first_norm + 1e-12)
    room = ((eps ** 2 - total.square()).clamp_min(0) / c + windows.square()).sqrt()
    new = new / (new.square().sum((2, 3), keepdim=True).sqrt() + 1e-12) * room
    delta = delta * (1 - both) + new * first
    return (x + _unit(delta) * eps).clamp(0, 1)


def _run(ask: Queries, x: Tensor, y: Tensor, rows: Tensor, *, norm: str, tm: ThreatModel,
         eps: float, budget: int, p_init: float,
         draws: torch.Generator | ExampleSeeds | None) -> tuple[Tensor, Tensor, Tensor]:
    """One run of ``budget`` queries per example (its start, then ``budget - 1`` random
    search steps) on the examples ``rows`` of the batch (images ``x``, labels ``y``).

    Returns ``(x_best, best, hit)``: per example its fooling point if one fooled the model,
    else its highest-margin point; that point's margin (M,); whether it fooled (M,).
    """
    m, c, h, w = x.shape
    if norm == "linf":
        x_best = _init_linf(x, eps, tm, draw_rows(draws, rows, (c * w,), x))
    else:
        x_best = _init_l2(x, eps, draw_rows(draws, rows, (_init_l2_draws(x),), x))
    logits = ask(x_best, rows)
    best, hit = margin(logits, y), fooled(logits, y, False)
    for i in range(budget - 1):
        act = (~hit).nonzero().squeeze(1)  # the examples not fooled yet
        if len(act) == 0:
            break
        p = p_schedule(i, budget, p_init)
        xa, xb = x[act], x_best[act]
        if norm == "linf":
            x_new = _step_linf(xa, xb, eps, tm, p, draw_rows(draws, rows[act], (2 + c,), x))
        else:
            x_new = _step_l2(xa, xb, eps, p, draw_rows(draws, rows[act], (5 + c,), x))
        logits = ask(x_new, rows[act])
        value, now = margin(logits, y[act]), fooled(logits, y[act], False)
        better = (value > best[act]) | now  # a higher margin, or fooled
        x_best[act] = torch.where(better.view(-1, 1, 1, 1), x_new, xb)
        best[act] = torch.where(better, value, best[act])
        hit[act] = now
    return x_best, best, hit


def _check(what: str, *, eps: float, queries: int, p_init: float, **options: Any) -> float:
    """Check square's options (refused with RobustkitError); returns eps as a float."""
    check_values(what, eps=eps, **options)
    check_positive_int(queries, what, "queries")
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) \
            or not 0 < p_init <= 1:
        raise RobustkitError(f"{what}: p_init must be a number in (0, 1], got {p_init!r}")
    return check_eps(eps, what)


def square(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
           queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           seed: int | ExampleSeeds | None = None) -> Tensor:
    """Square Attack (untargeted, margin loss): random search by square-shaped updates.

    Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a query-efficient
    black-box adversarial attack via random search", arXiv 1912.00049. Score-based: it
    reads the model's outputs only (never a gradient; every call runs under
    ``torch.no_grad``) and keeps a random change when it raises the margin (best other
    logit minus the true class's logit) or fools the model. Linf: a start of vertical
    stripes at +-eps, then squares set to +-eps per channel. L2: a start of 5 x 5 blocks
    of the centred pattern, then the centred square update, which moves mass between two
    random squares and keeps the norm at eps. The squares cover a fraction p of the
    image, ``p_init`` halved on the paper's schedule (defined for 10,000 queries and
    rescaled to the budget, as in the reference implementation).

    Queries: the budget ``queries`` counts every image sent to the model for an example,
    and no example is ever queried more. The first query is the clean image (an example
    the model gets wrong already is returned unchanged and costs 1 query); the rest are
    split evenly between the restarts (the earlier ones get the remainder), each run
    being its start and then random-search steps. An example stops being queried as soon
    as it is fooled; one never fooled makes exactly ``queries`` queries. Each query is
    charged to its example with :func:`robustkit.core.cost.charge` (``queries=1``).

    Args:
        model: any ``nn.Module`` returning logits (N, K) for images in [0, 1] (it need not
            have parameters: a query oracle works).
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,) in [0, K).
        eps: radius of the ``norm`` ball in pixel units, >= 0.
        norm: ``linf`` or ``l2``.
        queries: the query budget per example (>= 1), the clean image's query included.
        p_init: the initial fraction of pixels a square covers, in (0, 1].
        restarts: runs from fresh random starts for the examples not yet fooled (>= 1);
            they share the budget.
        seed: seeds the random draws (None: the global RNG; an :class:`ExampleSeeds`:
            each example from its own stream, so its result does not depend on the batch).

    Returns:
        Adversarial images (N, C, H, W) inside the eps-ball and [0, 1]: per example its
        first fooling point, else the point of highest margin seen (the clean image if no
        other was higher).

    Example:
        >>> x_adv = square(model, x, y, eps=0.3, queries=5000, seed=0)             # doctest: +SKIP
        >>> x_adv = square(model, x, y, eps=2.0, norm="l2", queries=1000)         # doctest: +SKIP
    """
    what = "square"
    eps = _check(what, eps=eps, norm=norm, queries=queries, p_init=p_init, restarts=restarts,
                 seed=seed)
    tm = threat_model(norm, what)
    x0, y0 = prepare(model, x, y, what, probe=False)
    n = len(x0)
    draws = draws_for(seed, n, what)
    view = (-1,) + (1,) * (x0.ndim - 1)
    with borrowed(model, what):
        ask = Queries(model, n, queries, what, scores=True)
        every = torch.arange(n, device=x0.device)
        clean = ask(x0, every)  # (N, K); query 1 of every example
        check_labels(y0, clean.shape[1], what)
        done = fooled(clean, y0, False)
        x_adv, best = x0.clone(), margin(clean, y0)
        left = queries - 1
        for r in range(restarts):
            share = left // restarts + (1 if r < left % restarts else 0)
            idx = (~done).nonzero().squeeze(1)
            if share == 0 or len(idx) == 0:
                break
            out, value, hit = _run(ask, x0[idx], y0[idx], idx, norm=norm, tm=tm, eps=eps,
                                   budget=share, p_init=p_init, draws=draws)
            take = hit | (value > best[idx])
            x_adv[idx] = torch.where(take.view(view), out, x_adv[idx])
            best[idx] = torch.where(take, value, best[idx])
            done[idx] = hit
    return check_result(x_adv, x0, eps=eps, norm=norm, what=what)


__all__ = ["P_HALVINGS", "Queries", "draw_rows", "draws_for", "eta", "p_schedule", "square"]
