"""The kinds of unit an experiment is made of: what each plans and what each computes.

Each kind is registered by name with :func:`register_unit`: a *planner* turns the config
into :class:`Planned` units (a key, the unit's own config section and its arguments), and
the *compute* function, given a :class:`~robustkit.experiment.context.Context` and those
arguments, returns ``(record, arrays)``. A record is plain JSON (the tidy row for
``results.json``); arrays are numpy arrays the report draws (images, attribution maps).
Every unit seeds torch itself, so its result does not depend on the units that ran before
it. Kinds run in the order they are registered: models first.

A new kind of unit is a section in :mod:`robustkit.experiment.config`, a planner and a
compute function here, and (if it is shown) a section of the report.

Example:
    >>> [kind.name for kind in UNITS.values()][:3]
    ['train', 'attack', 'examples']
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustkit import data, explain, metrics, models
from robustkit.attacks import bind, minimal_targeted
from robustkit.attacks import spec as attack_spec
from robustkit.blackbox import (Oracle, Substitute, planned_queries, substitute,
                                transfer_success)
from robustkit.config import TrainConfig
from robustkit.core import accuracy_of, predict
from robustkit.core.stream import batches
from robustkit.core.cost import metering, pgd40_equivalents
from robustkit.errors import RobustkitError
from robustkit.evaluate import (adversarial_examples, autoattack, minimal_table,
                                validity_checks)
from robustkit.experiment.config import (BlackboxSection, ExperimentConfig, ModelEntry,
                                         adversarial_config, blackbox_images, train_config)
from robustkit.experiment.context import Context
from robustkit.store import key, provenance
from robustkit import train as training
from robustkit.transfer import transfer_matrix

Result = tuple[dict[str, Any], dict[str, np.ndarray] | None]


@dataclass(frozen=True)
class Planned:
    """One planned unit: its key, its own config section, and its compute's arguments."""

    key: str
    section: Any
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class UnitKind:
    """A kind of unit: its name, its planner and its compute function."""

    name: str
    plan: Callable[[ExperimentConfig], Iterable[Planned]]
    compute: Callable[..., Result]


#: Name -> kind of unit, in the order the kinds run.
UNITS: dict[str, UnitKind] = {}


def register_unit(name: str, plan: Callable[[ExperimentConfig], Iterable[Planned]]
                  ) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Decorator: file ``compute`` as the unit kind ``name`` planned by ``plan``."""

    def decorate(compute: Callable[..., Result]) -> Callable[..., Result]:
        if name in UNITS:
            raise RobustkitError(f"unit kind {name!r} is already registered")
        UNITS[name] = UnitKind(name, plan, compute)
        return compute

    return decorate


def per_model(kind: str, cfg: ExperimentConfig, section: Any,
              extras: Iterable[tuple[Any, ...]] = ((),)) -> Iterator[Planned]:
    """One unit per listed model x seed x extra arguments (a norm, a method)."""
    extras = list(extras)
    for name in cfg.model_names(section.models):
        for seed in cfg.seeds:
            for extra in extras:
                yield Planned(key(kind, name, f"s{seed}", *extra), section, (name, seed, *extra))


def _np(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array (for the stored arrays)."""
    return t.detach().cpu().numpy()


def _attack(ctx: Context, model: nn.Module, attack: str, options: dict[str, Any],
            seed: int, eps: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The adversarial examples of ``x``, through the one option binder."""
    run = bind(attack, model, options, eps=eps, defaults={"seed": seed},
               what=f"experiment attack {attack!r}")
    torch.manual_seed(seed)
    return adversarial_examples(model, x, y, run, ctx.cfg.batch_size, False)


# -- models ----------------------------------------------------------------------------
def _plan_train(cfg: ExperimentConfig) -> Iterator[Planned]:
    for seed in cfg.seeds:
        for m in cfg.models:
            yield Planned(key("train", m.name, f"s{seed}"), m, (seed,))


def train_and_save(ctx: Context, entry: ModelEntry, seed: int, path: Path) -> None:
    """Train ``entry`` with ``seed`` on the run's dataset and save its checkpoint at
    ``path`` (:func:`robustkit.train.train_and_save`, the one train-then-save); a run
    killed during training goes on from ``PATH.resume`` (the last finished epoch)."""
    # Adversarial entries train on adversarial examples (None: clean images); the test
    # subset is scored every epoch, so the report can draw the learning curves.
    training.train_and_save(entry.architecture, ctx.cfg.dataset, path,
                            config=train_config(entry), seed=seed,
                            train_size=entry.train_size, options=entry.options,
                            adversarial=adversarial_config(entry), device=ctx.cfg.device,
                            eval_every=1, quiet=True, test=ctx.test_set())


def _stored_model(ctx: Context, entry: ModelEntry, seed: int) -> nn.Module | None:
    """The run's own checkpoint of ``entry`` if it is whole and this version trained it
    (a run killed just after saving leaves one without its record); else None."""
    path = ctx.checkpoint(entry.name, seed)
    if not path.exists():
        return None
    try:
        model = ctx.model(entry.name, seed)
    except RobustkitError as err:
        warnings.warn(f"model {entry.name!r} seed {seed}: {err}; training it again",
                      stacklevel=2)
        return None
    meta: dict[str, Any] = getattr(model, "robustkit_metadata", {})
    made = {k: meta.get(k) for k in ("robustkit", "git_commit")}
    if made != provenance():
        warnings.warn(f"checkpoint {path} was trained by robustkit {made['robustkit']} "
                      f"(commit {made['git_commit']}), not this version; training it again",
                      stacklevel=2)
        ctx.forget(entry.name, seed)
        return None
    return model


@register_unit("train", _plan_train)
def train(ctx: Context, seed: int) -> Result:
    """Train the model entry ``ctx.section`` with ``seed`` (or read its checkpoint) and
    score it on the test subset."""
    entry: ModelEntry = ctx.section
    path = ctx.checkpoint(entry.name, seed)
    if not entry.loaded and _stored_model(ctx, entry, seed) is None:
        train_and_save(ctx, entry, seed, path)
        ctx.forget(entry.name, seed)
    model = ctx.model(entry.name, seed)
    x, y = ctx.test_set()
    meta: dict[str, Any] = getattr(model, "robustkit_metadata", {})
    spec_: dict[str, Any] = getattr(model, "robustkit_spec", {})
    return {
        "kind": "model", "model": entry.name, "seed": seed, "arch": spec_["name"],
        "options": spec_.get("options", {}), "checkpoint": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_size": meta.get("train_size"), "training": meta.get("training"),
        "train_seconds": meta.get("train_seconds"), "history": meta.get("history"),
        "training_method": meta.get("training_method", "standard"),
        "threat_model": meta.get("threat_model"), "guard": meta.get("guard"),
        "clean_accuracy": (predict(model, x).argmax(1) == y).float().mean().item(),
        "architecture": str(model),
    }, None


# -- attacks ---------------------------------------------------------------------------
def _plan_attacks(cfg: ExperimentConfig) -> Iterator[Planned]:
    for a in cfg.attacks:
        for name in cfg.model_names(a.models):
            for seed in cfg.seeds:
                for e in a.eps:
                    yield Planned(key("attack", a.label, name, f"s{seed}", f"eps{e:g}"), a,
                                  (name, seed, e))


@register_unit("attack", _plan_attacks)
def attack(ctx: Context, name: str, seed: int, eps: float) -> Result:
    """One attack (``ctx.section``) at one eps on one model: accuracy, error, confidence,
    perceptibility."""
    entry = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.test_set()
    if entry.attack == "autoattack":
        return _autoattack(ctx, model, name, seed, eps), None
    with metering(len(y)) as bill:
        x_adv = _attack(ctx, model, entry.attack, entry.options, seed, eps, x, y)
    spent = bill.totals()  # attacks that do not count (user functions) leave zeros
    cost = {**spent, "pgd40_per_example": float(pgd40_equivalents(spent["forward"],
                                                                  spent["backward"])) / len(y)}
    return {"kind": "attack", "model": name, "seed": seed, "attack": entry.label,
            "method": entry.attack, "eps": eps, "options": entry.options,
            **_scores(model, x, x_adv, y), "cost": cost if spent["forward"] else None}, None


def _autoattack(ctx: Context, model: nn.Module, name: str, seed: int, eps: float
                ) -> dict[str, Any]:
    """AutoAttack (``attack = "autoattack"``): the robust accuracy, which attack broke each
    example and at what cost, the flags, and PGD-40 beside it."""
    entry = ctx.section
    x, y = ctx.test_set()
    result = autoattack(model, (x, y), eps=eps, seed=seed, batch_size=ctx.cfg.batch_size,
                        **entry.options)
    size = result.records["norm"][result.records["broken_by"] > 0]
    median = float(size.median()) if len(size) else None
    return {"kind": "attack", "model": name, "seed": seed, "attack": entry.label,
            "method": "autoattack", "eps": eps, "options": entry.options, "n": result.n,
            "clean_accuracy": result.clean_accuracy,
            "robust_accuracy": float(result.robust_accuracy),
            "error_rate": 1 - float(result.robust_accuracy),  # misclassified clean or fooled
            "mean_confidence": None, "mean_confidence_wrong": None,
            "success_rate": (1 - float(result.robust_accuracy) / result.clean_accuracy
                             if result.clean_accuracy else None),
            "median_l2": median if result.norm == "l2" else None,
            "median_linf": median if result.norm == "linf" else None,
            "median_psnr": None, "median_ssim": None,
            "autoattack": {"version": result.version, "norm": result.norm,
                           "attacks": result.attacks, "split": result.split(),
                           "cost": result.cost(), "pgd_accuracy": result.pgd_accuracy,
                           "flags": [{"name": f.name, "message": f.message}
                                     for f in result.flags]}}


def _scores(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
            ) -> dict[str, Any]:
    """Accuracy and error on the adversarial examples, confidence, and perceptibility."""
    clean_p = predict(model, x).softmax(1)
    adv_p = predict(model, x_adv).softmax(1)
    clean_ok = clean_p.argmax(1) == y
    adv_ok = adv_p.argmax(1) == y
    fooled = clean_ok & ~adv_ok
    conf = adv_p.max(1).values
    norms = metrics.perturbation_norms(x, x_adv)
    psnr, ssim = metrics.psnr(x, x_adv), metrics.ssim(x, x_adv)

    def median(t: torch.Tensor) -> float | None:
        return float(t[fooled].median()) if fooled.any() else None

    return {
        "n": len(y), "clean_accuracy": clean_ok.float().mean().item(),
        "robust_accuracy": (clean_ok & adv_ok).float().mean().item(),
        # Goodfellow et al. 2015's measures: error rate on the adversarial examples and the
        # mean confidence (top softmax probability) of the predictions on them.
        "error_rate": (~adv_ok).float().mean().item(),
        "mean_confidence": conf.mean().item(),
        "mean_confidence_wrong": conf[~adv_ok].mean().item() if (~adv_ok).any() else None,
        "success_rate": fooled.sum().item() / max(1, clean_ok.sum().item()),
        "median_l2": median(norms["l2"]), "median_linf": median(norms["linf"]),
        "median_psnr": median(psnr), "median_ssim": median(ssim),
    }


def _plan_examples(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.examples:
        yield from per_model("examples", cfg, cfg.examples)


@register_unit("examples", _plan_examples)
def examples(ctx: Context, name: str, seed: int) -> Result:
    """A few class-balanced images, attacked, for the imperceptibility grid."""
    sec = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.balanced(sec.n)
    x_adv = _attack(ctx, model, sec.attack, sec.options, seed, sec.eps, x, y)
    clean_p, adv_p = predict(model, x).softmax(1), predict(model, x_adv).softmax(1)
    arrays = {"x": _np(x), "x_adv": _np(x_adv), "y": _np(y),
              "clean_pred": _np(clean_p.argmax(1)), "clean_conf": _np(clean_p.max(1).values),
              "adv_pred": _np(adv_p.argmax(1)), "adv_conf": _np(adv_p.max(1).values)}
    return {"kind": "examples", "model": name, "seed": seed, "attack": sec.attack, "eps": sec.eps,
            **_scores(model, x, x_adv, y)}, arrays


def _plan_minimal(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.minimal:
        yield from per_model("minimal", cfg, cfg.minimal, [(n,) for n in cfg.minimal.norms])


@register_unit("minimal", _plan_minimal)
def minimal(ctx: Context, name: str, seed: int, norm: str) -> Result:
    """Median minimal targeted perturbation per (class, target); images for one target."""
    sec = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.balanced(sec.n)
    torch.manual_seed(seed)
    table = minimal_table(model, x, y, norm=norm, steps=sec.steps, progress=False)
    arrays = None
    if sec.target is not None:  # "turn every digit into a 3": one image per class
        keep = torch.from_numpy(np.unique(_np(y), return_index=True)[1])
        xs, ys = x[keep], y[keep]
        target = torch.full_like(ys, sec.target)
        x_adv, sizes = minimal_targeted(model, xs, target, norm=norm, steps=sec.steps)
        p = predict(model, x_adv).softmax(1)
        arrays = {"x": _np(xs), "x_adv": _np(x_adv), "y": _np(ys),
                  "norm": _np(sizes), "adv_pred": _np(p.argmax(1)),
                  "adv_conf": _np(p.max(1).values)}
    return {"kind": "minimal", "model": name, "seed": seed, "norm": norm, "n": len(y),
            "steps": sec.steps, "target": sec.target, **table}, arrays


# -- transfer --------------------------------------------------------------------------
def _plan_transfer(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.transfer:
        for seed in cfg.seeds:
            for source in cfg.transfer.sources:
                yield Planned(key("transfer", source, f"s{seed}"), cfg.transfer, (source, seed))


@register_unit("transfer", _plan_transfer)
def transfer(ctx: Context, source: str, seed: int) -> Result:
    """One source attacked once per eps, scored on every target."""
    sec = ctx.section
    x, y = ctx.test_set()
    targets = {t: ctx.model(t, seed) for t in sec.targets}
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # judged across sources at report time
        warnings.simplefilter("ignore")
        results = transfer_matrix({source: ctx.model(source, seed)}, targets, x, y,
                                  attack=sec.attack, eps=list(sec.eps),
                                  batch_size=ctx.cfg.batch_size, progress=False, seed=seed,
                                  **sec.options)
    rows = [{"eps": eps, "accuracy": m[source], "success": m.success[source]}
            for eps, m in results.items()]
    first = next(iter(results.values()))
    clean = {k: v.float().mean().item() for k, v in first.correct.items()}
    return {"kind": "transfer", "source": source, "seed": seed, "attack": sec.attack,
            "options": sec.options, "clean_accuracy": clean, "rows": rows}, None


# -- explanations ----------------------------------------------------------------------
def _plan_explain(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.explain:
        yield from per_model("explain", cfg, cfg.explain, [(m,) for m in cfg.explain.methods])


@register_unit("explain", _plan_explain)
def explanation(ctx: Context, name: str, seed: int, method: str) -> Result:
    """Attributions on clean and attacked images, their shift, faithfulness, and how much
    the maps look like the digit (Tsipras et al. 2019's perceptual alignment)."""
    sec = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.balanced(sec.n)
    base = {"kind": "explain", "model": name, "seed": seed, "method": method}
    try:
        clean_map = explain.attribute(model, x, y, method=method)
    except RobustkitError as err:  # e.g. Grad-CAM on a model without convolutions
        return {**base, "skipped": str(err)}, None
    x_adv = _attack(ctx, model, sec.attack, sec.options, seed, sec.eps, x, y)
    adv_map = explain.attribute(model, x_adv, y, method=method)
    shift = explain.explanation_shift(model, x, x_adv, y, method)
    shift.pop("per_example", None)
    record = {**base, "attack": sec.attack, "eps": sec.eps, "n": len(y), "shift": shift,
              # Both maps are judged against the clean digit: x_adv's background holds the
              # perturbation, which follows the gradient by construction.
              "alignment": explain.alignment(clean_map, x).to_dict(per_example=True),
              "alignment_adv": explain.alignment(adv_map, x).to_dict(per_example=True)}
    if sec.faithfulness:
        faith = explain.faithfulness(model, x, y, clean_map, seed=seed)
        record["faithfulness"] = {
            mode: {"auc": faith[mode]["auc"], "random_auc": faith["random"][mode]["auc"]}
            for mode in ("deletion", "insertion") if mode in faith}
    arrays = {"x": _np(x), "x_adv": _np(x_adv), "y": _np(y),
              "clean": _np(clean_map), "adv": _np(adv_map)}
    return record, arrays


def _plan_sanity(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.explain and cfg.explain.sanity:
        yield from per_model("sanity", cfg, cfg.explain)


@register_unit("sanity", _plan_sanity)
def sanity(ctx: Context, name: str, seed: int) -> Result:
    """Adebayo et al. 2018's cascading model-parameter randomization."""
    sec = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.balanced(sec.n)
    methods = []
    for m in sec.sanity_methods or sec.methods:  # the methods this model supports
        try:
            explain.attribute(model, x[:1], y[:1], method=m)
            methods.append(m)
        except RobustkitError:
            pass
    result = explain.sanity_check(model, x, y, methods, mode="cascading", seed=seed)
    return {"kind": "sanity", "model": name, "seed": seed, "n": len(y),
            "table": {m: list(steps) for m, steps in result.items()},
            "baseline": result.baseline}, None


# -- validity --------------------------------------------------------------------------
def _plan_validity(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.validity:
        yield from per_model("validity", cfg, cfg.validity)


@register_unit("validity", _plan_validity)
def validity(ctx: Context, name: str, seed: int) -> Result:
    """Carlini et al. 2019's checks that the evaluation is sound."""
    sec = ctx.section
    model = ctx.model(name, seed)
    x, y = ctx.balanced(sec.n)
    torch.manual_seed(seed)
    report = validity_checks(model, x, y, eps=sec.eps, norm=sec.norm, steps=sec.steps,
                             seed=seed, progress=False)
    return {"kind": "validity", "model": name, "seed": seed, "eps": sec.eps, **report}, None


# -- black box -------------------------------------------------------------------------
def _plan_blackbox(cfg: ExperimentConfig) -> Iterator[Planned]:
    if cfg.blackbox:
        yield from per_model("blackbox", cfg, cfg.blackbox)


@register_unit("blackbox", _plan_blackbox)
def blackbox(ctx: Context, name: str, seed: int) -> Result:
    """Papernot et al. 2017's black-box attack on model ``name`` through a label oracle
    (:func:`blackbox_run`): the seeds are the test split's first ``seed_n`` images, the
    transfers are scored on the run's test subset without them."""
    sec: BlackboxSection = ctx.section
    x_all, y_all = data.load_tensors(ctx.cfg.dataset, "test")
    seeds, scored = blackbox_images(y_all.numpy(), ctx.cfg.n_test, sec.seed_n)
    if len(scored) == 0:  # checked at load where the split could be read then
        raise RobustkitError(f"experiment.blackbox.seed_n: {sec.seed_n} seeds leave none of "
                             f"the run's {ctx.cfg.n_test} test images to score the transfers "
                             f"on; raise n_test or lower seed_n")
    subset = data.stratified_indices(y_all.numpy(), min(ctx.cfg.n_test, len(y_all)), seed=0)
    if not torch.equal(x_all[torch.from_numpy(subset)], ctx.test_set()[0]):
        raise RobustkitError("experiment.blackbox: blackbox_images does not take the run's "
                             "test subset as Context.test_set does (a bug)")
    s, t = torch.from_numpy(seeds), torch.from_numpy(scored)
    record = blackbox_run(ctx.model(name, seed), (x_all[s], y_all[s]), (x_all[t], y_all[t]),
                          sec, seed=seed, dataset=ctx.cfg.dataset, device=ctx.cfg.device,
                          batch_size=ctx.cfg.batch_size)
    return {"kind": "blackbox", "model": name, "seed": seed, **record}, None


def blackbox_run(target: nn.Module, seeds: tuple[torch.Tensor, torch.Tensor],
                 scored: tuple[torch.Tensor, torch.Tensor], sec: BlackboxSection, *,
                 seed: int, dataset: str, device: str = "auto", batch_size: int = 500
                 ) -> dict[str, Any]:
    """The black-box attack of a ``[blackbox]`` section on one target, as a JSON record.

    Papernot et al. 2017, arXiv 1602.02697. The attacker reaches ``target`` only through a
    label :class:`~robustkit.blackbox.Oracle` whose budget is the plan's queries
    (``seed_n * (2^(rounds-1) - 1)``, plus ``seed_n`` when the oracle labels the seeds),
    trains the substitute on it (:func:`~robustkit.blackbox.substitute`) and crafts
    ``sec.attack`` on it at each eps. A second oracle, the judge, scores the transferred
    examples (its queries are the measurement's, not the attacker's). Beside it: a
    surrogate of the same arch trained on the true labels of as many training images as
    the substitute's final set (at most the training split: the record says when it was
    capped), attacked and scored the same way; and Square
    (:func:`~robustkit.attacks.square`) on an oracle of the target's scores, once per
    budget of ``sec.square_queries``, at the largest eps.

    Args:
        target: the model attacked (N, C, H, W) in [0, 1] -> (N, K) logits.
        seeds: the attacker's seed images (n, C, H, W) and their true labels (n,).
        scored: the images (N, C, H, W) and true labels (N,) the transfers are scored on.
        sec: the section's settings.
        seed: seeds the substitute, the surrogate and its data, and the attacks.
        dataset: the dataset the target was trained for (the surrogate's training split).
        device: where the substitute and the surrogate train.
        batch_size: images per oracle call and per attack call.

    Returns:
        ``substitute`` (its settings, ``history`` per round: ``size``, ``queries``,
        ``lam``, ``accuracy`` on ``scored``; ``queries``, ``size``, ``accuracy``),
        ``oracle_accuracy`` (the target's on ``scored``), ``transfer`` (``substitute``
        and, with ``sec.surrogate``, ``surrogate``: :func:`~robustkit.blackbox.
        transfer_success`'s dicts, lists per eps), ``surrogate`` (``size``, ``wanted``,
        ``train_split``, ``capped``, ``accuracy``; None without it), ``square`` (per
        budget ``queries``, ``eps``, ``norm``, ``robust_accuracy``, ``queries_used``,
        ``mean_queries``), ``judge_queries`` and ``timings`` (seconds per part).

    Example:
        >>> rec = blackbox_run(target, (x[:150], y[:150]), (x[150:], y[150:]),
        ...                    BlackboxSection(), seed=0, dataset="mnist-5k")  # doctest: +SKIP
        >>> rec["substitute"]["queries"]                                        # doctest: +SKIP
        4650
    """
    # long function: the record's layout in the docstring, then four short steps in order
    # (substitute, transfer, surrogate, Square) that share the judge, its labels and options.
    k = data.spec(dataset).num_classes
    attacker = sec.seed_labels == "attacker"
    plan = planned_queries(len(seeds[0]), sec.rounds, not attacker)
    oracle = Oracle(target, budget=plan, num_classes=k, batch_size=batch_size)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    sub = substitute(oracle, seeds[0], seed_y=seeds[1] if attacker else None, arch=sec.arch,
                     arch_options=sec.substitute_options, rounds=sec.rounds, lam=sec.lam,
                     flip_every=sec.flip_every, epochs=sec.epochs, seed=seed, device=device,
                     test=scored, progress=False)
    timings["substitute"] = time.perf_counter() - start
    if sub.queries != plan or oracle.queries != plan:  # the oracle's budget makes it so
        raise RobustkitError(f"blackbox: the substitute spent {sub.queries:,} queries, "
                             f"planned {plan:,} (a bug)")
    judge = Oracle(target, num_classes=k, batch_size=batch_size)
    x, y = scored
    clean = judge.labels(x)  # (N,): asked once, shared by every transfer below
    options = dict(sec.options)
    params = attack_spec(sec.attack).params
    if params is not None and "seed" in params:
        options["seed"] = seed  # per example, by index: independent of the batch size

    def transfer_of(model: nn.Module) -> dict[str, Any]:
        torch.manual_seed(seed)
        return transfer_success(judge, model, x, y, attack=sec.attack, eps=list(sec.eps),
                                clean_labels=clean, batch_size=batch_size, **options)

    start = time.perf_counter()
    transfer = {"substitute": transfer_of(sub.model)}
    timings["transfer"] = time.perf_counter() - start
    surrogate = None
    if sec.surrogate:
        start = time.perf_counter()
        model, surrogate = _surrogate(sec, sub, dataset, seed, device, scored)
        transfer["surrogate"] = transfer_of(model)
        timings["surrogate"] = time.perf_counter() - start
    square_rows = []
    for budget in sec.square_queries:
        start = time.perf_counter()
        square_rows.append(_square(target, judge, x, y, sec, budget, seed, k, batch_size))
        timings[f"square_{budget}"] = time.perf_counter() - start
    history = sub.history
    return {"dataset": dataset, "seed_n": len(seeds[0]), "seed_labels": sec.seed_labels,
            "n": len(y),
            "substitute": {**sub.options, "history": history, "queries": sub.queries,
                           "size": history[-1]["size"], "accuracy": history[-1]["accuracy"]},
            "attack": sec.attack, "options": sec.options, "eps": list(sec.eps),
            "oracle_accuracy": (clean.cpu() == y.cpu()).float().mean().item(),
            "transfer": transfer, "surrogate": surrogate, "square": square_rows,
            "judge_queries": judge.queries, "timings": timings}


def _surrogate(sec: BlackboxSection, sub: Substitute, dataset: str, seed: int, device: str,
               test: tuple[torch.Tensor, torch.Tensor]) -> tuple[nn.Module, dict[str, Any]]:
    """The course's subset attacker beside the substitute: the same arch, trained as one
    round of the substitute (its epochs, batch size, Adam and learning rate, no
    augmentation, no label smoothing) on the true labels of a class-balanced, seeded
    subset of the training split as large as the substitute's final set, or the whole
    split when that is smaller (``capped``)."""
    x, y = data.load_tensors(dataset, "train")
    wanted, split = int(sub.history[-1]["size"]), len(y)
    size = min(wanted, split)
    if size < split:
        keep = torch.from_numpy(data.stratified_indices(y.numpy(), size, seed=seed))
        x, y = x[keep], y[keep]
    spec_ = data.spec(dataset)
    torch.manual_seed(seed)
    model = models.create(sec.arch, spec_.in_shape, spec_.num_classes,
                          **sec.substitute_options)
    o = sub.options
    cfg = TrainConfig(epochs=sec.epochs, batch_size=o["batch_size"], lr=o["lr"],
                      optimizer="adam", weight_decay=0.0, label_smoothing=0.0, augment="none")
    training.fit(model, (x, y), config=cfg, device=device, seed=seed, quiet=True)
    model.eval()
    return model, {"arch": sec.arch, "arch_options": sec.substitute_options, "size": size,
                   "wanted": wanted, "train_split": split,
                   "capped": size < wanted, "epochs": sec.epochs,
                   "accuracy": accuracy_of(model, test[0], test[1])}


def _square(target: nn.Module, judge: Oracle, x: torch.Tensor, y: torch.Tensor,
            sec: BlackboxSection, budget: int, seed: int, k: int, batch_size: int
            ) -> dict[str, Any]:
    """Square's robust accuracy on the target's scores at the largest eps with ``budget``
    queries per image (the judge labels the results: ``len(x)`` queries more)."""
    eps = max(sec.eps)
    scores = Oracle(target, output="scores", budget=len(x) * budget, num_classes=k,
                    batch_size=batch_size)
    run = bind("square", scores, {"queries": budget, "norm": sec.norm}, eps=eps,
               defaults={"seed": seed}, what="experiment blackbox square")
    x_adv = torch.empty_like(x)
    for b in batches((x, y), batch_size, what="experiment blackbox square"):
        x_adv[b.index] = run(b.x, b.y, b.index).cpu()
    robust = (judge.labels(x_adv).cpu() == y.cpu()).float().mean().item()
    return {"queries": budget, "eps": eps, "norm": sec.norm, "robust_accuracy": robust,
            "queries_used": scores.queries, "mean_queries": scores.queries / len(x)}
