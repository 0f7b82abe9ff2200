"""Robust accuracy, robustness curves, and automated validity checks of an evaluation.

Example:
    >>> robust_accuracy(model, x, y, "pgd", eps=0.3, steps=40)                 # doctest: +SKIP
    0.004
    >>> robustness_curve(model, x, y, attack="pgd", eps=[0.1, 0.2, 0.3], steps=10)  # doctest: +SKIP
    [{'eps': 0.1, 'accuracy': 0.71, ...}, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit.attacks.base import check_result, fooled, generator, threat_model
from robustkit.attacks.binding import AttackSpec, BoundAttack, bind, check_options
from robustkit.attacks.pgd import iterate
from robustkit.core import (borrowed, check_eps, check_inputs, check_labels,
                            check_positive_int, model_contract, model_device, model_dtype)
from robustkit.core.distributed import current_shard, gather
from robustkit.core.resume import BlockStore
from robustkit.core.seeding import ExampleSeeds
from robustkit.core.stream import Data, as_tensors, batches, size
from robustkit.errors import RobustkitError
from robustkit.autoattack import AutoAttackResult, autoattack  # noqa: F401 (evaluate.autoattack)
from robustkit.outcomes import Accuracy, Outcomes, as_data, outcomes, warn_if_near_chance

Tensor = torch.Tensor


def _bound(model: nn.Module, attack: Any, options: dict[str, Any], what: str,
           seed: int | None = None) -> BoundAttack:
    """The attack with its options, eps taken out of them (the binder's one way in); the
    evaluation's seed reaches attacks that take one."""
    if attack is None:
        raise RobustkitError(f"{what}: give the attack (a name such as 'pgd', "
                             f"'package.module:function', a torchattacks object or a callable)")
    if isinstance(attack, BoundAttack):
        if options:
            raise RobustkitError(f"{what}: a bound attack takes no further options, "
                                 f"got {sorted(options)}")
        return attack
    opts = dict(options)
    eps = opts.pop("eps", None)
    return bind(attack, model, opts, eps=eps, what=what,
                defaults={} if seed is None else {"seed": seed})


def adversarial_examples(model: nn.Module, x: Tensor | Data, y: Tensor | None = None,
                         attack: Any = None, batch_size: int = 500, progress: bool = True,
                         seed: int | None = 0, **options: Any) -> Tensor:
    """Run ``attack`` over the data in batches (with a progress bar); returns x_adv on the
    CPU, in example order, each example's randomness seeded by ``seed`` and its index.

    Holds every adversarial example: to score them, use :func:`robust_accuracy` or
    :func:`robustkit.outcomes.outcomes`, whose memory stays proportional to the batch.

    Args:
        model: the attacked model.
        x: images (N, C, H, W) in [0, 1] with labels ``y`` (N,); or a Dataset or a
            DataLoader of ``(x, y)`` (then no ``y``, and the attack by keyword).
        attack: a registered name, ``module:function``, a function ``(model, x, y, ...)``,
            a torchattacks object or a callable ``(x, y)``; see
            :func:`robustkit.attacks.bind`.
        seed: the seed of attacks that take one (None: the global random state).
        options: the attack's options, ``eps`` included; each must be in its signature.

    Example:
        >>> x_adv = adversarial_examples(model, x, y, "pgd", eps=0.3)   # doctest: +SKIP
    """
    data = as_data(x, y, "adversarial_examples")
    check_positive_int(batch_size, "adversarial_examples", "batch_size")
    run = _bound(model, attack, options, "adversarial_examples", seed)
    total = size(data)
    bar = tqdm(total=total, disable=not progress, unit="img", desc=run.name, leave=False)
    out = []
    try:
        for b in batches(data, batch_size, what="adversarial_examples"):
            out.append(run(b.x, b.y.long(), index=b.index).detach().cpu())
            bar.update(len(b.y))
    finally:
        bar.close()
    if not out:
        raise RobustkitError("adversarial_examples: the data holds no examples")
    return torch.cat(out)


def robust_accuracy(model: nn.Module, x: Tensor | Data, y: Tensor | None = None,
                    attack: Any = None, batch_size: int = 500, progress: bool = True,
                    seed: int | None = 0, **options: Any) -> Accuracy:
    """Accuracy of ``model`` on ``attack``'s adversarial examples of the data.

    An example counts as robust only if it is classified correctly both clean and
    attacked, so the result never exceeds clean accuracy, which it carries
    (``.clean_accuracy``); a clean accuracy near chance gets a warning. The adversarial
    examples are scored batch by batch and dropped, so memory does not grow with N.
    Inside a torch.distributed process group each rank attacks its shard of the examples
    and every rank returns the whole result; each example's randomness is seeded by
    ``seed`` and its global index, so the number depends neither on the batch size nor on
    the number of processes.

    Args:
        model: returns logits (N, K).
        x: images (N, C, H, W) in [0, 1] with true labels ``y`` (N,); or a Dataset or a
            DataLoader of ``(x, y)`` (then no ``y``, and the attack by keyword).
        attack: a registered name (``"pgd"``), ``module:function``, a torchattacks object
            or a callable ``(x, y) -> x_adv`` (see :func:`robustkit.attacks.bind`).
        batch_size: images per attack call.
        seed: the seed of attacks that take one (None: the global random state).
        options: the attack's options, ``eps`` included.

    Returns:
        An :class:`Accuracy`: a float in [0, 1] with ``clean_accuracy`` and ``n``.

    Example:
        >>> acc = robust_accuracy(model, x, y, "pgd", eps=0.3, steps=40)     # doctest: +SKIP
        >>> float(acc), acc.clean_accuracy                                   # doctest: +SKIP
        (0.004, 0.987)
        >>> robust_accuracy(model, loader, attack="fgsm", eps=0.1)           # doctest: +SKIP
    """
    data = as_data(x, y, "robust_accuracy")
    check_positive_int(batch_size, "robust_accuracy", "batch_size")
    run = _bound(model, attack, options, "robust_accuracy", seed)
    out = outcomes(data, {"model": model}, run, batch_size=batch_size, progress=progress,
                   what="robust_accuracy")
    return _accuracy(out, model, "robust_accuracy")


def _accuracy(out: Outcomes, model: nn.Module, what: str) -> Accuracy:
    n = len(out.index)
    clean = out.clean["model"].float().mean().item()
    warn_if_near_chance(clean, _num_classes(model, out), n, what)
    return Accuracy(out.robust("model").float().mean().item(), clean, n)


def _num_classes(model: nn.Module, out: Outcomes) -> int:
    spec = getattr(model, "robustkit_spec", None)
    if spec is not None:
        return int(spec["num_classes"])
    return max(2, int(out.label.max().item()) + 1) if len(out.label) else 2


def robustness_curve(model: nn.Module, x: Tensor | Data, y: Tensor | None = None, *,
                     attack: Any = "pgd", eps: Sequence[float], batch_size: int = 1000,
                     progress: bool = True, seed: int | None = 0,
                     resume: BlockStore | None = None, **attack_kwargs: Any
                     ) -> list[dict[str, Any]]:
    """Accuracy against eps, at a fraction of the cost of attacking afresh at every eps.

    An adversarial example at eps is one at every larger eps, and an example that
    resists at eps resists (for the attack) at every smaller one. So for ``pgd`` and
    ``bim`` each example's breaking point is found by bisection over the eps grid: about
    log2(len(eps)) probes per example instead of one per eps, and each probe stops at
    the first iterate that fools the model. Each probe is the same attack as a separate
    run at that eps (same steps, step size ``2.5 * eps / steps``, the example's own
    random start), so the curve agrees with the per-eps loop up to the attack's own
    randomness. Other attacks (and user callables) run once per eps, ascending, on the
    examples still robust at the previous eps. Attacks that measure a distance (DeepFool,
    C&W) take no eps and are refused. The data streams batch by batch; inside a process
    group each rank takes its shard.

    Args:
        model: returns logits (N, K).
        x: images (N, C, H, W) in [0, 1] with labels ``y`` (N,), or a Dataset or a
            DataLoader of ``(x, y)`` (then no ``y``).
        attack: ``pgd``/``bim`` (bisection), another registered name, ``module:function``,
            a torchattacks object, or a callable that takes ``eps`` as a keyword.
        eps: the radii, any order; the result is sorted by eps.
        batch_size: images per attack call.
        seed: seeds each example's random start by its global index (attacks that take
            a seed).
        resume: keep finished blocks there and read them back in a later call
            (:class:`robustkit.core.resume.BlockStore`): a killed run goes on where it was.
        attack_kwargs: the attack's options (pgd: ``steps`` (default 10), ``alpha``,
            ``norm``, ``random_start``, ``targeted``).

    Returns:
        One dict per eps, ascending: ``eps``, ``accuracy``, ``clean_accuracy``,
        ``attacked`` (examples attacked at this eps) and ``gradient_evaluations``
        (per-example forward+backward passes spent at this eps; None for attacks that do
        not report it).

    Example:
        >>> robustness_curve(model, x, y, eps=[0.1, 0.2, 0.3], steps=10)   # doctest: +SKIP
        [{'eps': 0.1, 'accuracy': 0.93, ...}, {'eps': 0.2, ...}, {'eps': 0.3, ...}]
    """
    data = as_data(x, y, "robustness_curve")
    eps_list = sorted(check_eps(e, "robustness_curve") for e in eps)
    if not eps_list:
        raise RobustkitError("robustness_curve: eps must hold at least one value")
    check_positive_int(batch_size, "robustness_curve", "batch_size")
    s = check_options(attack, attack_kwargs, grid=True, what="robustness_curve")
    if s.kind == "registered" and s.name in ("pgd", "bim"):
        return _bisection_curve(model, data, eps_list, s, batch_size, seed, progress,
                                attack_kwargs, resume)
    run = bind(attack, model, attack_kwargs, eps=eps_list[0], what="robustness_curve",
               defaults={} if seed is None else {"seed": seed})
    base = outcomes(data, {"model": model}, None, batch_size=batch_size,
                    what="robustness_curve", resume=_scope(resume, "clean"))
    clean = base.clean["model"].float().mean().item()
    warn_if_near_chance(clean, _num_classes(model, base), len(base.index), "robustness_curve")
    robust = torch.zeros(int(base.index.max()) + 1, dtype=torch.bool)  # by global index
    robust[base.index] = base.clean["model"]
    records = []
    bar = tqdm(total=len(eps_list), disable=not progress, unit="eps", desc="curve", leave=False)
    try:
        for e in eps_list:
            attacked = int(robust.sum())
            if attacked:
                out = outcomes(data, {"model": model}, run.at(e), batch_size=batch_size,
                               what="robustness_curve", only=robust.clone(), clean=False,
                               resume=_scope(resume, f"eps{e!r}"))
                robust[out.index] &= out.adv["model"]
            records.append({"eps": e, "accuracy": robust[base.index].float().mean().item(),
                            "clean_accuracy": clean, "attacked": attacked,
                            "gradient_evaluations": None})
            bar.update()
    finally:
        bar.close()
    return records


def _scope(resume: BlockStore | None, name: str) -> BlockStore | None:
    return resume.scope(name) if resume is not None else None


def _bisection_curve(model: nn.Module, data: Data, eps_list: list[float], s: AttackSpec,
                     batch_size: int, seed: int | None, progress: bool,
                     options: dict[str, Any], resume: BlockStore | None
                     ) -> list[dict[str, Any]]:
    """The pgd/bim curve by per-example bisection over the grid, batch by batch (each
    example's bisection is its own, so batching and sharding change nothing)."""
    extra = sorted(set(options) - {"steps", "alpha", "norm", "random_start", "targeted",
                                    "amp"})
    if extra:
        raise RobustkitError(
            f"robustness_curve: the {s.name} curve takes steps, alpha, norm, random_start, "
            f"targeted and amp; not {', '.join(extra)} (seed is its own argument)")
    opts = {"steps": 10, "alpha": None, "norm": "linf", "random_start": s.name == "pgd",
            "targeted": False, "amp": False, **options}
    check_positive_int(opts["steps"], "robustness_curve", "steps")
    if opts["alpha"] is not None:
        check_eps(opts["alpha"], "robustness_curve", "alpha")
    tm = threat_model(opts["norm"], "robustness_curve")
    grid = torch.tensor(eps_list)
    total = size(data)
    shard = current_shard()
    bar = tqdm(total=None if total is None else len(range(shard.rank, total, shard.world)),
               disable=not progress, unit="img", desc="curve", leave=False)
    records: dict[str, list[Tensor]] = {"index": [], "lo": [], "clean": [], "probes": [],
                                        "spent": []}
    first = True
    try:
        with borrowed(model, "robustness_curve", fast_layout=True, amp=opts["amp"]):
            for b in batches(data, batch_size, shard=shard, what="robustness_curve"):
                y = b.y.long()
                if first:
                    check_labels(y, model_contract(model, b.x, "robustness_curve"),
                                 "robustness_curve")
                    first = False
                part = _scope(resume, "bisection")
                done = part.get(int(b.index[0])) if part is not None else None
                if done is None or len(done["index"]) != len(y):
                    done = _bisect_batch(model, b.x, y, b.index, grid, tm, seed, opts)
                    if part is not None:
                        part.put(int(b.index[0]), done)
                for k, v in done.items():
                    records[k].append(v)
                bar.update(len(y))
    finally:
        bar.close()
    joined = gather({k: torch.cat(v) if v else torch.empty(0) for k, v in records.items()})
    n = len(joined["index"])
    if n == 0:
        raise RobustkitError("robustness_curve: the data holds no examples")
    clean = joined["clean"].float().mean().item()
    spec = getattr(model, "robustkit_spec", None)
    warn_if_near_chance(clean, int(spec["num_classes"]) if spec else 10, n, "robustness_curve")
    return [{"eps": e, "accuracy": (joined["lo"] >= k).float().mean().item(),
             "clean_accuracy": clean, "attacked": int(joined["probes"][:, k].sum()),
             "gradient_evaluations": int(joined["spent"][:, k].sum())}
            for k, e in enumerate(eps_list)]


def _bisect_batch(model: nn.Module, x: Tensor, y: Tensor, index: Tensor, grid: Tensor,
                  tm: Any, seed: int | None, opts: dict[str, Any]) -> dict[str, Tensor]:
    """One batch's bisection: per example, the largest grid index it resists (``lo``, -1
    when none), whether it was right clean, and the probes and passes spent per grid point."""
    dev = model_device(model, x)
    xb = x.to(dev, dtype=model_dtype(model) or x.dtype)
    yb = y.to(dev)
    n, g = len(y), len(grid)
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):  # judged in float32
        correct = (model(xb).argmax(1) == yb).cpu()  # (B,)
    lo = torch.full((n,), -1, dtype=torch.long)
    hi = torch.full((n,), g, dtype=torch.long)
    hi[~correct] = 0
    probes = torch.zeros(n, g, dtype=torch.long)
    spent_at = torch.zeros(n, g, dtype=torch.long)
    # One unit-ball noise per example from its own stream: every probe of example i at
    # eps e starts where a separate run at e starts, whatever batch or rank it is in.
    draws = ExampleSeeds(seed, index) if seed is not None else generator(None)
    unit = tm.unit_noise(xb.shape, xb, draws) if opts["random_start"] else None
    steps, alpha = opts["steps"], opts["alpha"]
    while True:
        idx = (hi - lo > 1).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        mid = (lo[idx] + hi[idx]) // 2  # (M,) grid index probed per example
        e = grid[mid].to(dev, xb.dtype).view(-1, 1, 1, 1)  # (M, 1, 1, 1): own eps each
        a = e * 2.5 / steps if alpha is None else torch.full_like(e, alpha)
        xs = xb[idx.to(dev)]
        start = tm.start_from(xs, unit[idx.to(dev)], e) if unit is not None else xs
        spent = torch.zeros(len(idx), dtype=torch.long, device=dev)
        x_end, success = iterate(model, xs, yb[idx.to(dev)], start, threat=tm, eps=e,
                                 alpha=a, steps=steps, targeted=opts["targeted"],
                                 early_stop=True, spent=spent)
        assert success is not None  # early_stop=True returns the success mask
        if opts["amp"]:  # the steps ran in mixed precision; success is judged in float32
            with torch.no_grad(), torch.autocast(dev.type, enabled=False):
                success = fooled(model(x_end), yb[idx.to(dev)], opts["targeted"])
        hit = success.cpu()
        hi[idx[hit]] = mid[hit]
        lo[idx[~hit]] = mid[~hit]
        probes[idx, mid] += 1
        spent_at[idx, mid] += spent.cpu()
    return {"index": index, "lo": lo, "clean": correct, "probes": probes, "spent": spent_at}


def validity_checks(model: nn.Module, x: Tensor | Data, y: Tensor | None = None, *,
                    eps: float = 0.3,
                    norm: str = "linf", steps: int = 20, large_eps: float | None = None,
                    transfer_from: nn.Module | None = None, seed: int = 0,
                    batch_size: int = 500, progress: bool = True,
                    resume: BlockStore | None = None) -> dict[str, Any]:
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
        - ``pgd_matches_apgd_dlr``: PGD on cross-entropy is at most 2 points above APGD on
          the DLR loss (Croce and Hein 2020, 100 steps), which is invariant to the logits'
          scale: a larger gap means PGD's number overstates robustness (saturated softmax,
          masked gradients) and AutoAttack (:func:`autoattack`) should give it.

    Returns:
        ``{"passed": bool, "checks": [{"name", "passed", "detail", ...numbers}]}``;
        ``passed`` is True when every check that ran passed.
    """
    # long function: the docstring states every check; the body runs them in order.
    data = as_data(x, y, "validity_checks")
    eps = check_eps(eps, "validity_checks")
    threat_model(norm, "validity_checks")  # refuse an unknown norm before any work
    large_eps = check_eps((0.5 if norm == "linf" else 10.0) if large_eps is None else large_eps,
                          "validity_checks", "large_eps")
    check_positive_int(steps, "validity_checks", "steps")
    check_positive_int(batch_size, "validity_checks", "batch_size")
    pgd_kw: dict[str, Any] = {"norm": norm, "eps": eps}

    def run(part: str, attack: Any, source: nn.Module = model, **kw: Any) -> Outcomes:
        bar.update()
        bound = attack if isinstance(attack, BoundAttack) else _bound(
            source, attack, kw, "validity_checks", seed)
        return outcomes(data, {"model": model}, bound, batch_size=batch_size,
                        what="validity_checks", resume=_scope(resume, part))

    bar = tqdm(total=7, disable=not progress, desc="validity checks", leave=False)
    try:
        pgd = run("pgd", "pgd", steps=steps, **pgd_kw)
        correct, pgd_ok = pgd.clean["model"], pgd.robust("model")  # (N,) each
        single = run("single", "fgsm", eps=eps) if norm == "linf" else run(
            "single", "pgd", eps=eps, steps=1, alpha=eps, random_start=False, norm=norm)
        pgd_double = run("double", "pgd", steps=2 * steps, **pgd_kw)
        grid = sorted({eps / 4, eps / 2, eps, 2 * eps, large_eps})
        curve = robustness_curve(model, data, attack="pgd", eps=grid, steps=steps, norm=norm,
                                 seed=seed, progress=False, batch_size=batch_size,
                                 resume=_scope(resume, "curve"))
        curve_acc = [r["accuracy"] for r in curve]  # sorted by eps, like grid
        noise_ok = run("noise", _noise(model, eps, norm, seed)).robust("model")  # (N,)
        # DLR needs 3 classes; with 2 the check is skipped.
        apgd_dlr = (_mean(run("apgd-dlr", "apgd", loss="dlr", steps=100, **pgd_kw))
                    if _num_classes(model, pgd) >= 3 else None)
        transfer_acc = None
        if transfer_from is not None:
            tr = run("transfer", "pgd", source=transfer_from, steps=steps, **pgd_kw)
            transfer_acc = float(tr.robust("model").float().mean())
    finally:
        bar.close()
    pgd_acc = float(pgd_ok.float().mean())
    warn_if_near_chance(float(correct.float().mean()), _num_classes(model, pgd), len(correct),
                        "validity_checks")
    checks = _verdicts(pgd_acc=pgd_acc, single=_mean(single), pgd_double=_mean(pgd_double),
                       grid=grid, curve_acc=curve_acc, large_eps=large_eps, pgd_ok=pgd_ok,
                       noise_ok=noise_ok, transfer_acc=transfer_acc, steps=steps,
                       noise=f"random {norm} noise of size {eps:g}", apgd_dlr=apgd_dlr)
    ran = [c["passed"] for c in checks if c["passed"] is not None]
    return {"passed": all(ran), "clean_accuracy": float(correct.float().mean()), "eps": eps,
            "norm": norm, "checks": checks}


def _verdicts(*, pgd_acc: float, single: float, pgd_double: float, grid: list[float],
              curve_acc: list[float], large_eps: float, pgd_ok: Tensor, noise_ok: Tensor,
              transfer_acc: float | None, steps: int, noise: str, apgd_dlr: float | None
              ) -> list[dict[str, Any]]:
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
        {"name": "pgd_matches_apgd_dlr", "passed": None,
         "detail": "skipped: the DLR loss needs at least 3 classes"} if apgd_dlr is None else
        {"name": "pgd_matches_apgd_dlr", "passed": pgd_acc - apgd_dlr <= 0.02 + 1e-9,
         "pgd": pgd_acc, "apgd_dlr": apgd_dlr,
         "detail": f"PGD-{steps} (cross-entropy) {pgd_acc:.3f} vs APGD-DLR-100 "
                   f"{apgd_dlr:.3f}: a gap of {100 * (pgd_acc - apgd_dlr):.1f} points (at "
                   f"most 2 allowed)"},
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


def _mean(out: Outcomes) -> float:
    return float(out.robust("model").float().mean())


def _noise(model: nn.Module, eps: float, norm: str, seed: int) -> BoundAttack:
    """Random noise of size eps as an attack: each example's noise from its own stream."""
    spec = AttackSpec(f"random {norm} noise", "registered", _noise_at_radius,
                      frozenset({"norm", "seed"}), True)
    return BoundAttack(spec, model, {"norm": norm, "seed": seed}, eps, "validity_checks")


def _noise_at_radius(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str,
                     seed: int | ExampleSeeds | None) -> Tensor:
    """Random perturbations of exactly size eps (before the [0, 1] clip): signs for Linf,
    a uniform direction for L2."""
    draws = generator(seed)
    if norm == "linf":
        u = (draws.rand(x.shape, x.dtype) if isinstance(draws, ExampleSeeds)
             else torch.rand(x.shape, generator=draws, dtype=x.dtype))
        signs = (u < 0.5).to(x.dtype) * 2 - 1
        return check_result((x + eps * signs).clamp(0, 1), x, eps=eps, norm=norm,
                            what="random noise")
    direction = (draws.randn(x.shape, x.dtype) if isinstance(draws, ExampleSeeds)
                 else torch.randn(x.shape, generator=draws, dtype=x.dtype))
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return check_result((x + eps * direction).clamp(0, 1), x, eps=eps, norm=norm,
                        what="random noise")


def minimal_table(model: nn.Module, x: Tensor | Data, y: Tensor | None = None, *,
                  norm: str = "l2",
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

    # Every (image, target) pair is attacked: a table over a few hundred images at most,
    # so the data is gathered into tensors.
    x, y = as_tensors(as_data(x, y, "minimal_table"), "minimal_table")
    check_inputs(x, y, what="minimal_table")
    k = model_contract(model, x, "minimal_table")
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
