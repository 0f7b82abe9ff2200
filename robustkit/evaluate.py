"""Robust accuracy, robustness curves, and automated validity checks of an evaluation.

Example:
    >>> robust_accuracy(model, x, y, "pgd", eps=0.3, steps=40)                 # doctest: +SKIP
    0.004
    >>> robustness_curve(model, x, y, attack="pgd", eps=[0.1, 0.2, 0.3], steps=10)  # doctest: +SKIP
    [{'eps': 0.1, 'accuracy': 0.71, ...}, ...]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit.attacks.base import generator, threat_model
from robustkit.attacks.binding import BoundAttack, bind, check_options
from robustkit.attacks.pgd import iterate
from robustkit.core import (borrowed, check_eps, check_inputs, check_labels, check_positive_int,
                            model_contract, model_device, predict)
from robustkit.errors import RobustkitError

Tensor = torch.Tensor


def _bound(model: nn.Module, attack: Any, options: dict[str, Any], what: str) -> BoundAttack:
    """The attack with its options, eps taken out of them (the binder's one way in)."""
    if isinstance(attack, BoundAttack):
        if options:
            raise RobustkitError(f"{what}: a bound attack takes no further options, "
                                 f"got {sorted(options)}")
        return attack
    opts = dict(options)
    eps = opts.pop("eps", None)
    return bind(attack, model, opts, eps=eps, what=what)


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterator[slice]:
    """Slices of ``batch_size`` over ``n`` examples, with a progress bar."""
    bar = tqdm(total=n, disable=not progress, unit="img", desc=desc, leave=False)
    try:
        for i in range(0, n, batch_size):
            yield slice(i, min(n, i + batch_size))
            bar.update(min(n, i + batch_size) - i)
    finally:
        bar.close()


def adversarial_examples(model: nn.Module, x: Tensor, y: Tensor, attack: Any,
                         batch_size: int = 500, progress: bool = True, **options: Any) -> Tensor:
    """Run ``attack`` over ``x`` in batches (with a progress bar); returns x_adv on the CPU.

    Holds every adversarial example: to score them, use :func:`robust_accuracy` or
    :func:`attack_outcomes`, whose memory stays proportional to the batch.

    Args:
        model: the attacked model.
        x: images (N, C, H, W) in [0, 1]; y: labels (N,).
        attack: a registered name, ``module:function``, a function ``(model, x, y, ...)``,
            a torchattacks object or a callable ``(x, y)``; see
            :func:`robustkit.attacks.bind`.
        options: the attack's options, ``eps`` included; each must be in its signature.
    """
    check_inputs(x, y, what="adversarial_examples")
    check_positive_int(batch_size, "adversarial_examples", "batch_size")
    run = _bound(model, attack, options, "adversarial_examples")
    return torch.cat([run(x[b], y[b]).detach().cpu()
                      for b in _batches(len(x), batch_size, progress, run.name)])


def attack_outcomes(model: nn.Module, x: Tensor, y: Tensor, attack: Any,
                    batch_size: int = 500, progress: bool = True,
                    scorers: dict[str, nn.Module] | None = None, **options: Any
                    ) -> dict[str, Tensor]:
    """Per-example outcomes of ``attack``, batch by batch: memory stays proportional to the
    batch, not to N (no adversarial example outlives its batch).

    Args:
        model: the attacked model; x (N, C, H, W) in [0, 1]; y (N,).
        attack, options: as for :func:`adversarial_examples`.
        scorers: models to score the adversarial examples on (default ``{"model":
            model}``); transfer passes its targets.

    Returns:
        ``{name: (N,) bool}``: whether each scorer labels the adversarial example ``y``.
    """
    check_inputs(x, y, what="attack_outcomes")
    check_positive_int(batch_size, "attack_outcomes", "batch_size")
    run = _bound(model, attack, options, "attack_outcomes")
    scorers = scorers if scorers is not None else {"model": model}
    out = {name: torch.empty(len(x), dtype=torch.bool) for name in scorers}
    for b in _batches(len(x), batch_size, progress, run.name):
        x_adv = run(x[b], y[b])
        for name, scorer in scorers.items():
            out[name][b] = predict(scorer, x_adv).argmax(1) == y[b].cpu()
    return out


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: Any,
                    batch_size: int = 500, progress: bool = True, **options: Any) -> float:
    """Accuracy of ``model`` on ``attack``'s adversarial examples of ``x``.

    An example counts as robust only if it is classified correctly both clean and
    attacked, so the result never exceeds clean accuracy. The adversarial examples are
    scored batch by batch and dropped, so memory does not grow with N.

    Args:
        model: returns logits (N, K); x: (N, C, H, W) in [0, 1]; y: true labels (N,).
        attack: a registered name (``"pgd"``), ``module:function``, a torchattacks object
            or a callable ``(x, y) -> x_adv`` (see :func:`robustkit.attacks.bind`).
        batch_size: images per attack call.
        options: the attack's options, ``eps`` included.

    Returns:
        A fraction in [0, 1].

    Example:
        >>> robust_accuracy(model, x, y, "pgd", eps=0.3, steps=40)     # doctest: +SKIP
        0.004
    """
    check_inputs(x, y, what="robust_accuracy")
    model_contract(model, x, "robust_accuracy")
    clean_ok = predict(model, x, what="robust_accuracy").argmax(1) == y.cpu()  # (N,)
    adv_ok = attack_outcomes(model, x, y, attack, batch_size, progress, **options)["model"]
    return (clean_ok & adv_ok).float().mean().item()


def robustness_curve(model: nn.Module, x: Tensor, y: Tensor, *, attack: Any = "pgd",
                     eps: Sequence[float], batch_size: int = 1000, progress: bool = True,
                     seed: int | None = 0, **attack_kwargs: Any) -> list[dict[str, Any]]:
    """Accuracy against eps, at a fraction of the cost of attacking afresh at every eps.

    An adversarial example at eps is one at every larger eps, and an example that
    resists at eps resists (for the attack) at every smaller one. So for ``pgd`` and
    ``bim`` each example's breaking point is found by bisection over the eps grid: about
    log2(len(eps)) probes per example instead of one per eps, and each probe stops at
    the first iterate that fools the model. Each probe is the same attack as a separate
    run at that eps (same steps, step size ``2.5 * eps / steps``, fresh random start),
    so the curve agrees with the per-eps loop up to the attack's own randomness.
    Other attacks (and user callables) run once per eps, ascending, on the examples
    still robust at the previous eps. Attacks that measure a distance (DeepFool, C&W)
    take no eps and are refused.

    Args:
        model: returns logits (N, K); x: (N, C, H, W) in [0, 1]; y: true labels (N,).
        attack: ``pgd``/``bim`` (bisection), another registered name, ``module:function``,
            a torchattacks object, or a callable that takes ``eps`` as a keyword.
        eps: the radii, any order; the result is sorted by eps.
        batch_size: images per attack call.
        seed: seeds the random starts (of attacks that take a seed).
        attack_kwargs: the attack's options (pgd: ``steps`` (default 10), ``alpha``,
            ``norm``, ``random_start``, ``targeted``).

    Returns:
        One dict per eps, ascending: ``eps``, ``accuracy``, ``attacked`` (examples
        attacked at this eps) and ``gradient_evaluations`` (per-example forward+backward
        passes spent at this eps; None for attacks that do not report it).

    Example:
        >>> robustness_curve(model, x, y, eps=[0.1, 0.2, 0.3], steps=10)   # doctest: +SKIP
        [{'eps': 0.1, 'accuracy': 0.93, ...}, {'eps': 0.2, ...}, {'eps': 0.3, ...}]
    """
    check_inputs(x, y, what="robustness_curve")
    eps_list = sorted(check_eps(e, "robustness_curve") for e in eps)
    if not eps_list:
        raise RobustkitError("robustness_curve: eps must hold at least one value")
    check_positive_int(batch_size, "robustness_curve", "batch_size")
    s = check_options(attack, attack_kwargs, grid=True, what="robustness_curve")
    model_contract(model, x, "robustness_curve")
    correct = predict(model, x).argmax(1) == y.cpu()  # (N,) wrong when clean: never robust
    if s.kind == "registered" and s.name in ("pgd", "bim"):
        extra = sorted(set(attack_kwargs) - {"steps", "alpha", "norm", "random_start",
                                              "targeted"})
        if extra:
            raise RobustkitError(
                f"robustness_curve: the {s.name} curve takes steps, alpha, norm, "
                f"random_start and targeted; not {', '.join(extra)} (seed is its own "
                f"argument)")
        return _bisection_curve(model, x, y, correct, eps_list, s.name, batch_size, seed,
                                progress, **attack_kwargs)
    run = bind(attack, model, attack_kwargs, eps=eps_list[0], defaults={"seed": seed},
               what="robustness_curve")
    robust = correct.clone()
    records = []
    bar = tqdm(total=len(eps_list), disable=not progress, unit="eps", desc="curve", leave=False)
    try:
        for e in eps_list:
            idx = robust.nonzero().squeeze(1)
            if len(idx):
                robust[idx] = attack_outcomes(model, x[idx], y[idx], run.at(e), batch_size,
                                              progress=False)["model"]
            records.append({"eps": e, "accuracy": robust.float().mean().item(),
                            "attacked": int(len(idx)), "gradient_evaluations": None})
            bar.update()
    finally:
        bar.close()
    return records


def _bisection_curve(model: nn.Module, x: Tensor, y: Tensor, correct: Tensor,
                     eps_list: list[float], attack: str, batch_size: int, seed: int | None,
                     progress: bool, *, steps: int = 10, alpha: float | None = None,
                     norm: str = "linf", random_start: bool | None = None,
                     targeted: bool = False) -> list[dict[str, Any]]:
    check_positive_int(steps, "robustness_curve", "steps")
    check_positive_int(batch_size, "robustness_curve", "batch_size")
    if alpha is not None:
        check_eps(alpha, "robustness_curve", "alpha")
    tm = threat_model(norm, "robustness_curve")
    if random_start is None:
        random_start = attack == "pgd"
    dev = model_device(model, x)
    gen = generator(seed)
    g = len(eps_list)
    grid = torch.tensor(eps_list, dtype=x.dtype)
    n = len(x)
    # Per example: robust at grid[:lo + 1], fooled at grid[hi:]; open while hi - lo > 1.
    lo = torch.full((n,), -1, dtype=torch.long)
    hi = torch.full((n,), g, dtype=torch.long)
    hi[~correct] = 0
    attacked = torch.zeros(g, dtype=torch.long)
    spent_at = torch.zeros(g, dtype=torch.long)
    rounds = max(1, math.ceil(math.log2(g + 1)))
    # One unit-ball noise per example, drawn as a single run of the attack would draw it
    # for the whole batch: every probe of example i at eps e then starts where that run
    # at e starts, so the curve differs from the per-eps loop only where early stopping
    # or an example's non-monotone fate across eps does.
    unit = tm.unit_noise(x.shape, x, gen) if random_start else None  # (N, C, H, W)
    bar = tqdm(total=rounds, disable=not progress, unit="round", desc="curve", leave=False)
    try:
        with borrowed(model, "robustness_curve", fast_layout=True):
            check_labels(y, model_contract(model, x, "robustness_curve"), "robustness_curve")
            while True:
                idx = (hi - lo > 1).nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                mid = (lo[idx] + hi[idx]) // 2  # (M,) grid index probed per example
                for i in range(0, len(idx), batch_size):
                    b, mb = idx[i:i + batch_size], mid[i:i + batch_size]
                    xb, yb = x[b].to(dev), y[b].to(dev)
                    e = grid[mb].to(dev).view(-1, 1, 1, 1)  # (B, 1, 1, 1): own eps each
                    a = e * 2.5 / steps if alpha is None else torch.full_like(e, alpha)
                    start = tm.start_from(xb, unit[b].to(dev), e) if unit is not None else xb
                    spent = torch.zeros(len(b), dtype=torch.long, device=dev)
                    _, success = iterate(model, xb, yb, start, threat=tm, eps=e, alpha=a,
                                         steps=steps, targeted=targeted, early_stop=True,
                                         spent=spent)
                    assert success is not None  # early_stop=True returns the success mask
                    hit = success.cpu()
                    hi[b[hit]] = mb[hit]
                    lo[b[~hit]] = mb[~hit]
                    attacked.index_add_(0, mb, torch.ones_like(mb))
                    spent_at.index_add_(0, mb, spent.cpu())
                bar.update()
    finally:
        bar.close()
    return [{"eps": e, "accuracy": (lo >= k).float().mean().item(),
             "attacked": int(attacked[k]), "gradient_evaluations": int(spent_at[k])}
            for k, e in enumerate(eps_list)]


def validity_checks(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3,
                    norm: str = "linf", steps: int = 20, large_eps: float | None = None,
                    transfer_from: nn.Module | None = None, seed: int = 0,
                    batch_size: int = 500, progress: bool = True) -> dict[str, Any]:
    """Automated sanity checks of a robustness evaluation.

    After Carlini et al. 2019, "On Evaluating Adversarial Robustness" (arXiv 1902.06705),
    section 5: signs that an attack is broken or that the model masks its gradients.

    Checks (each with its numbers):
        - ``iterative_beats_single_step``: PGD accuracy <= FGSM accuracy (Linf) or the
          one-step PGD accuracy (L2), with 1 point of slack.
        - ``more_steps_barely_help``: PGD with twice the steps lowers accuracy by at most
          2 points (otherwise the attack had not converged).
        - ``monotone_in_eps``: accuracy does not rise with eps (1 point slack) over
          eps/4, eps/2, eps, 2 eps and ``large_eps``.
        - ``large_eps_reaches_zero``: at ``large_eps`` (Linf 0.5, L2 10) accuracy <= 2%.
        - ``beats_random_noise``: random noise of size eps finds no adversarial examples
          where PGD failed (Carlini et al.'s sec. 5: random sampling must not succeed
          where the gradient attack did not): PGD accuracy <= noise accuracy, and at most
          1% of the examples are left correct by PGD but fooled by the noise
          (``noise_only``, their ``noise_only_share`` of ``n``). A robust model may resist
          both almost equally (PGD 92% vs noise 97%) without masking anything.
        - ``beats_transfer``: with ``transfer_from``, white-box PGD accuracy <= accuracy on
          PGD examples crafted on that model (skipped without one).

    Returns:
        ``{"passed": bool, "checks": [{"name", "passed", "detail", ...numbers}]}``;
        ``passed`` is True when every check that ran passed.
    """
    check_inputs(x, y, what="validity_checks")
    eps = check_eps(eps, "validity_checks")
    threat_model(norm, "validity_checks")  # refuse an unknown norm before any work
    large_eps = check_eps((0.5 if norm == "linf" else 10.0) if large_eps is None else large_eps,
                          "validity_checks", "large_eps")
    check_positive_int(steps, "validity_checks", "steps")
    check_positive_int(batch_size, "validity_checks", "batch_size")
    model_contract(model, x, "validity_checks")
    pgd_kw: dict[str, Any] = {"norm": norm, "seed": seed, "eps": eps}

    def acc(attack: str, **kw: Any) -> float:  # robust accuracy, and one tick of the bar
        bar.update()
        return robust_accuracy(model, x, y, attack, batch_size=batch_size, progress=False, **kw)

    bar = tqdm(total=7, disable=not progress, desc="validity checks", leave=False)
    try:
        correct = predict(model, x).argmax(1) == y.cpu()  # (N,)
        pgd_ok = correct & attack_outcomes(model, x, y, "pgd", batch_size, progress=False,
                                           steps=steps, **pgd_kw)["model"]  # (N,)
        pgd_acc = float(pgd_ok.float().mean())
        single = (acc("fgsm", eps=eps) if norm == "linf" else
                  acc("pgd", eps=eps, steps=1, alpha=eps, random_start=False, norm=norm))
        pgd_double = acc("pgd", steps=2 * steps, **pgd_kw)
        grid = sorted({eps / 4, eps / 2, eps, 2 * eps, large_eps})
        curve = robustness_curve(model, x, y, attack="pgd", eps=grid, steps=steps, norm=norm,
                                 seed=seed, progress=False, batch_size=batch_size)
        curve_acc = [r["accuracy"] for r in curve]  # sorted by eps, like grid
        bar.update(3)
        x_noise = _noise_at_radius(x, eps, norm, generator(seed))
        noise_ok = correct & (predict(model, x_noise).argmax(1) == y.cpu())  # (N,)
        transfer_acc = None
        if transfer_from is not None:
            tr_ok = attack_outcomes(transfer_from, x, y, "pgd", batch_size, progress=False,
                                    scorers={"model": model}, steps=steps, **pgd_kw)["model"]
            transfer_acc = float((correct & tr_ok).float().mean())
        bar.update(2)
    finally:
        bar.close()
    checks = _verdicts(pgd_acc=pgd_acc, single=single, pgd_double=pgd_double, grid=grid,
                       curve_acc=curve_acc, large_eps=large_eps, pgd_ok=pgd_ok,
                       noise_ok=noise_ok, transfer_acc=transfer_acc, steps=steps,
                       noise=f"random {norm} noise of size {eps:g}")
    ran = [c["passed"] for c in checks if c["passed"] is not None]
    return {"passed": all(ran), "clean_accuracy": float(correct.float().mean()), "eps": eps,
            "norm": norm, "checks": checks}


def _verdicts(*, pgd_acc: float, single: float, pgd_double: float, grid: list[float],
              curve_acc: list[float], large_eps: float, pgd_ok: Tensor, noise_ok: Tensor,
              transfer_acc: float | None, steps: int, noise: str) -> list[dict[str, Any]]:
    """The checks of :func:`validity_checks`, each with its numbers, from the measurements."""
    large_acc = curve_acc[grid.index(large_eps)]
    checks = [
        # One point of slack: on a sound model PGD can trail FGSM by a few examples.
        {"name": "iterative_beats_single_step", "passed": pgd_acc <= single + 0.01,
         "pgd": pgd_acc, "single_step": single,
         "detail": f"PGD-{steps} {pgd_acc:.3f} vs single step {single:.3f}"},
        {"name": "more_steps_barely_help", "passed": pgd_acc - pgd_double <= 0.02,
         "pgd": pgd_acc, "pgd_double_steps": pgd_double,
         "detail": f"PGD-{steps} {pgd_acc:.3f} vs PGD-{2 * steps} {pgd_double:.3f}"},
        {"name": "monotone_in_eps",
         "passed": all(b <= a + 0.01 for a, b in zip(curve_acc, curve_acc[1:])),
         "eps": grid, "accuracy": curve_acc,
         "detail": ", ".join(f"{e:.3g}: {a:.3f}" for e, a in zip(grid, curve_acc))},
        {"name": "large_eps_reaches_zero", "passed": large_acc <= 0.02,
         "eps": large_eps, "accuracy": large_acc,
         "detail": f"accuracy {large_acc:.3f} at eps {large_eps:g}"},
        _beats_random_noise(pgd_ok, noise_ok, noise),
    ]
    if transfer_acc is not None:
        checks.append({"name": "beats_transfer", "passed": pgd_acc <= transfer_acc + 1e-9,
                       "pgd": pgd_acc, "transfer": transfer_acc,
                       "detail": f"white-box {pgd_acc:.3f} vs transferred {transfer_acc:.3f}"})
    else:
        checks.append({"name": "beats_transfer", "passed": None,
                       "detail": "skipped: no transfer_from model given"})
    return checks


def _beats_random_noise(pgd_ok: Tensor, noise_ok: Tensor, noise: str,
                        max_share: float = 0.01) -> dict[str, Any]:
    """The ``beats_random_noise`` check from per-example outcomes, (N,) bools each: True
    where the example is classified correctly both clean and after PGD (or the noise).

    It fails where PGD does worse than the noise overall, or where the noise fools examples
    that PGD could not, more than ``max_share`` of all ``N``: gradients that lead PGD astray
    (masked, obfuscated) rather than a model that resists both.
    """
    n = len(pgd_ok)
    pgd_acc = int(pgd_ok.sum()) / n
    noise_acc = int(noise_ok.sum()) / n
    noise_only = int((pgd_ok & ~noise_ok).sum())  # PGD failed, random noise succeeded
    share = noise_only / n
    return {"name": "beats_random_noise",
            "passed": pgd_acc <= noise_acc and share <= max_share,
            "pgd": pgd_acc, "noise": noise_acc, "noise_only": noise_only,
            "noise_only_share": share, "n": n,
            "detail": f"PGD {pgd_acc:.3f} vs {noise} {noise_acc:.3f}; the noise fooled "
                      f"{noise_only} of {n} examples ({100 * share:.1f}%, at most "
                      f"{100 * max_share:g}% allowed) that PGD did not"}


def _noise_at_radius(x: Tensor, eps: float, norm: str, gen: torch.Generator | None) -> Tensor:
    """Random perturbations of exactly size eps (before the [0, 1] clip): signs for Linf,
    a uniform direction for L2."""
    if norm == "linf":
        signs = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int8).to(x.dtype) * 2 - 1
        return (x + eps * signs).clamp(0, 1)
    direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x + eps * direction).clamp(0, 1)


def minimal_table(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "l2",
                  steps: int = 200, batch_size: int = 1000, progress: bool = True
                  ) -> dict[str, Any]:
    """Median smallest perturbation turning images of each class into each other class.

    Every image is attacked towards every class other than its own with
    :func:`robustkit.attacks.minimal_targeted`.

    Args:
        x: images (N, C, H, W) in [0, 1]; y: their true labels (N,).
        norm: ``l2`` or ``linf``.
        steps: gradient steps per search.

    Returns:
        ``{"median": K x K nested list (None on the diagonal and where no pair succeeded),
        "success_rate": fraction of (image, target) pairs reached, "pairs": count,
        "norm": norm}``. Rows are true classes, columns targets.
    """
    from robustkit.attacks import minimal_targeted

    check_inputs(x, y, what="minimal_table")
    k = predict(model, x[:1]).shape[1]
    check_labels(y, k, "minimal_table")
    # Every (image, target != label) pair: image index repeated k - 1 times.
    targets = torch.arange(k).repeat(len(y), 1)  # (N, K)
    keep = targets != y[:, None]
    img_idx = torch.arange(len(y))[:, None].expand(-1, k)[keep]  # (P,)
    tgt = targets[keep]  # (P,)
    sizes = torch.empty(len(tgt))
    bar = tqdm(total=len(tgt), disable=not progress, unit="pair", desc=f"minimal {norm}",
               leave=False)
    try:
        for i in range(0, len(tgt), batch_size):
            sl = slice(i, i + batch_size)
            _, found = minimal_targeted(model, x[img_idx[sl]], tgt[sl], norm=norm, steps=steps)
            sizes[sl] = found.cpu()
            bar.update(len(found))
    finally:
        bar.close()
    src = y[img_idx]
    median: list[list[float | None]] = [[None] * k for _ in range(k)]
    for r in range(k):
        for t in range(k):
            sel = (src == r) & (tgt == t) & torch.isfinite(sizes)
            if r != t and sel.any():
                median[r][t] = float(sizes[sel].median())
    return {"norm": norm, "median": median, "pairs": int(len(tgt)),
            "success_rate": float(torch.isfinite(sizes).float().mean())}
