"""Substitute training with Jacobian-based augmentation, and transfer through an oracle.

Papernot, McDaniel, Goodfellow, Jha, Celik and Swami 2017, "Practical Black-Box Attacks
against Machine Learning", arXiv 1602.02697 (Algorithm 1, with the periodic step size of
section 6). The attacker has a few seed images and an :class:`~robustkit.blackbox.Oracle`
that answers the target's label, one query per image. Each round ``r``:

1. the oracle labels the points added since the last round (the seeds too, unless the
   attacker brings ``seed_y``, their own labels of the seeds, as CleverHans' tutorial does);
2. the substitute trains on every point so far;
3. except after the last round, every point ``x`` gets a sibling
   ``clip(x + lam_r * sign(grad_x F_{O(x)}(x)), 0, 1)``, where ``F_k`` is the substitute's
   logit of class ``k``, ``O(x)`` the point's label and ``lam_r = lam * (-1)^floor(r /
   flip_every)``: the set doubles.

With ``n`` seeds and ``R`` rounds the oracle answers ``n * (2^(R-1) - 1)`` queries, plus
``n`` when it labels the seeds: 150 seeds and 6 rounds cost 4,650 (4,800). Adversarial
examples crafted on the substitute with any robustkit attack then transfer to the target
(:func:`transfer_success`).

The substitute's weights carry over from round to round, as in CleverHans v3's
``mnist_blackbox`` tutorial (its ``train(..., init_all=False)`` keeps the variables); each
round is one :func:`robustkit.train.fit` call on the whole set so far (a new Adam and a new
one-cycle schedule per round), so the seeded shuffling, device handling, checks and the
stop on divergence are fit's. The augmentation differentiates the logits, as CleverHans'
``jacobian_graph`` does (the paper writes the Jacobian of ``F``'s output). One departure:
CleverHans multiplies lambda by ``2 * int(int(rho / 3) != 0) - 1`` (-1 for the first three
rounds, +1 after); robustkit follows the paper's ``(-1)^floor(r / tau)`` (+1 first).

Example:
    >>> oracle = Oracle(target)                                              # doctest: +SKIP
    >>> sub = substitute(oracle, x_test[:150], seed_y=y_test[:150], test=(x_test, y_test))
    >>> sub.queries, sub.history[-1]["accuracy"]                             # doctest: +SKIP
    (4650, 0.81)
    >>> transfer_success(oracle, sub.model, x_test[150:], y_test[150:], eps=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit import models
from robustkit.attacks.binding import bind
from robustkit.blackbox.oracle import Oracle
from robustkit.config import TrainConfig
from robustkit.core import (accuracy_of, borrowed, check_eps, check_inputs, check_labels,
                            check_positive_int, model_device, model_dtype, pick_device)
from robustkit.core.stream import batches
from robustkit.errors import RobustkitError
from robustkit.train import fit

Tensor = torch.Tensor

#: The largest training set (values, images x C x H x W) a plan may grow to: 2**31 float32
#: values are 8 GiB; beyond it the doubling set exhausts memory (the paper's reservoir
#: sampling, which bounds it, is not implemented).
MAX_SET_VALUES = 2**31


@dataclass
class Substitute:
    """A trained substitute and how it was made.

    Attributes:
        model: the substitute (eval mode, on the training device).
        history: one dict per round: ``round`` (0-based), ``size`` (points trained on),
            ``queries`` (oracle queries spent so far, those points' labels), ``lam`` (the
            step of the augmentation after this round; None after the last) and
            ``accuracy`` (on ``test``'s true labels; None without ``test``).
        queries: the oracle queries the whole run spent.
        options: the settings of the run.
        points: the final training set (M, C, H, W) on the CPU: the seeds, then each
            round's siblings (row ``i + m`` of round ``r``'s set is the sibling of row ``i``,
            ``m`` being the set's size before the round).
        labels: their labels (M,) int64: the seeds' (the attacker's or the oracle's), then
            the oracle's.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    queries: int
    options: dict[str, Any] = field(default_factory=dict)
    points: Tensor | None = None
    labels: Tensor | None = None


def planned_queries(seeds: int, rounds: int, oracle_labels_seeds: bool = True) -> int:
    """The oracle queries of a run: ``seeds * (2^(rounds-1) - 1)``, plus ``seeds`` when the
    oracle labels the seeds.

    Example:
        >>> planned_queries(150, 6, oracle_labels_seeds=False)
        4650
    """
    return seeds * (2 ** (rounds - 1) - 1) + (seeds if oracle_labels_seeds else 0)


def step_size(lam: float, r: int, flip_every: int) -> float:
    """The augmentation step after round ``r``: ``lam * (-1)^floor(r / flip_every)``."""
    return lam * (-1) ** (r // flip_every)


#: The substitute's options for an ``arch`` given without ``arch_options``: for the mlp,
#: CleverHans v3's tutorial substitute (two hidden layers of 200, no dropout). Measured on
#: the default mlp oracle with 150 seeds and 6 rounds: oracle accuracy on FGSM transfers at
#: eps 0.3 of 17.3-19.5% over 4 seeds, against 18.0-21.3% for the mlp's own defaults
#: (512-256, dropout 0.2). Any other arch gets its own defaults.
SUBSTITUTE_OPTIONS: dict[str, dict[str, Any]] = {"mlp": {"hidden": [200, 200], "dropout": 0.0}}


def substitute(
    oracle: Oracle,
    seed_x: Tensor,
    *,
    arch: str | nn.Module = "mlp",
    arch_options: Mapping[str, Any] | None = None,
    rounds: int = 6,
    lam: float = 0.1,
    flip_every: int = 3,
    seed_y: Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.001,
    seed: int = 0,
    device: str | torch.device = "auto",
    test: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
) -> Substitute:
    """Train a substitute of the oracle's target from its labels (Papernot et al. 2017).

    Papernot et al. 2017, arXiv 1602.02697, Algorithm 1 (see the module docstring for the
    rounds, the query count and the choices made). Every option is checked, and the
    plan's queries compared with the oracle's budget, before the first query.

    Args:
        oracle: an :class:`Oracle` over the target (it counts the queries; the attacker
            never touches the target itself). Its number of classes must be known.
        seed_x: the attacker's seed images (n, C, H, W) in [0, 1].
        arch: the substitute: a model spec (:func:`robustkit.models.create`: a registered
            name such as ``mlp`` or ``alexnet``, ``torchvision:NAME``, ...), built for the
            seeds' shape and the oracle's classes; or an ``nn.Module``, of which a copy is
            trained (the module given is left as it was).
        arch_options: the spec's own options (e.g. ``{"hidden": [200, 200]}``); None:
            :data:`SUBSTITUTE_OPTIONS` for ``arch`` if it has an entry, else its defaults.
        rounds: substitute training rounds (int >= 1).
        lam: the augmentation step size (finite, > 0), in pixel units.
        flip_every: lambda changes sign every this many rounds (int >= 1).
        seed_y: the attacker's own labels of the seeds (n,), integers in [0, K); None:
            the oracle labels the seeds (n more queries).
        epochs, batch_size, lr: each round's training (Adam, no augmentation, no label
            smoothing; CleverHans' tutorial: 10 epochs, batches of 128, lr 0.001).
        seed: seeds the substitute's initialization and each round's shuffling.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``: where the substitute trains.
        test: ``(x, y)`` with true labels: the substitute's accuracy on it after each round
            (no oracle query).
        progress: a progress bar over the rounds.

    Returns:
        A :class:`Substitute`.

    Raises:
        RobustkitError: a bad option (named), an oracle that is not an :class:`Oracle`, or
            a budget smaller than the plan's queries.

    Example:
        >>> sub = substitute(Oracle(target), x[:150], seed_y=y[:150], epochs=10)  # doctest: +SKIP
        >>> sub.queries                                                          # doctest: +SKIP
        4650
    """
    # long function: the checks and the round loop, each short; split, they would pass
    # eleven arguments around.
    what = "substitute"
    k = _check_oracle(oracle, what)
    _check_images(seed_x, seed_y, oracle, k, "seed_x", "seed_y", what)
    check_positive_int(rounds, what, "rounds")
    check_positive_int(flip_every, what, "flip_every")
    check_positive_int(epochs, what, "epochs")
    check_positive_int(batch_size, what, "batch_size")
    check_positive_int(seed, what, "seed", minimum=0)
    lam = _positive(lam, what, "lam")
    lr = _positive(lr, what, "lr")
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise RobustkitError(f"{what}: test must be an (x, y) pair of tensors")
        _check_images(test[0], test[1], oracle, k, "test x", "test y", what)
        if test[0].shape[1:] != seed_x.shape[1:]:
            raise RobustkitError(f"{what}: test images are {tuple(test[0].shape[1:])} but the "
                                 f"seeds {tuple(seed_x.shape[1:])}")
    n = len(seed_x)
    plan = planned_queries(n, rounds, seed_y is None)
    final = n * 2 ** (rounds - 1)
    if final * math.prod(seed_x.shape[1:]) > MAX_SET_VALUES:
        raise RobustkitError(f"{what}: {rounds} rounds from {n} seeds grow the set to {final:,} "
                             f"images, more than memory holds; lower rounds")
    if oracle.remaining is not None and oracle.remaining < plan:
        raise RobustkitError(
            f"{what}: the plan needs {plan:,} queries ({n} seeds, {rounds} rounds"
            f"{', seeds labelled by the oracle' if seed_y is None else ''}) but the oracle has "
            f"{oracle.remaining:,} left ({oracle.queries:,} of {oracle.budget:,} used); lower "
            f"rounds or the number of seeds")
    dev = pick_device(device)
    if arch_options is None and isinstance(arch, str):
        arch_options = SUBSTITUTE_OPTIONS.get(arch)
    model, arch_name = _build(arch, arch_options, tuple(seed_x.shape[1:]), k, seed, what)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam",
                      weight_decay=0.0, label_smoothing=0.0, augment="none")
    options = {"arch": arch_name, "arch_options": dict(arch_options or {}), "rounds": rounds,
               "lam": lam, "flip_every": flip_every, "seeds": n,
               "seed_labels": "oracle" if seed_y is None else "attacker", "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "optimizer": "adam", "seed": seed,
               "device": str(dev), "training": "continued", "planned_queries": plan}

    x_set = seed_x.detach().cpu().float()  # (M, C, H, W), grows each round
    spent = 0
    if seed_y is None:
        y_set = oracle.labels(x_set).cpu()
        spent += n
    else:
        y_set = seed_y.detach().cpu().long()
    history: list[dict[str, Any]] = []
    with tqdm(range(rounds), disable=not progress, desc=what, unit="round",
              leave=False) as bar:
        for r in bar:
            fit(model, (x_set, y_set), config=cfg, device=dev, seed=seed + r, quiet=True)
            acc = None if test is None else accuracy_of(model, test[0], test[1].cpu())
            lam_r = step_size(lam, r, flip_every) if r < rounds - 1 else None
            history.append({"round": r, "size": len(x_set), "queries": spent, "lam": lam_r,
                            "accuracy": acc})
            bar.set_postfix({"size": len(x_set), "queries": spent,
                             **({} if acc is None else {"accuracy": f"{acc:.3f}"})})
            if lam_r is not None:
                siblings = jacobian_augmentation(model, x_set, y_set, lam_r)
                y_new = oracle.labels(siblings).cpu()  # (M,): the only queries of the round
                spent += len(siblings)
                x_set, y_set = torch.cat([x_set, siblings]), torch.cat([y_set, y_new])
    return Substitute(model, history, spent, options, x_set, y_set)


def jacobian_augmentation(model: nn.Module, x: Tensor, y: Tensor, lam: float,
                          batch_size: int = 500) -> Tensor:
    """The siblings ``clip(x + lam * sign(grad_x F_y(x)), 0, 1)`` of ``x`` (M, C, H, W).

    Papernot et al. 2017, arXiv 1602.02697, section 4.2: each point steps along the sign of
    the substitute's Jacobian row of its label ``y`` (M,) (the gradient of the logit
    ``F_y``). Runs ``model`` in eval mode (its modes given back, parameters' gradients
    untouched). Returns (M, C, H, W) float32 on the CPU, in [0, 1].

    Example:
        >>> new = jacobian_augmentation(sub, x, y, 0.1)   # doctest: +SKIP
    """
    dev, dtype = model_device(model, x), model_dtype(model) or torch.float32
    out = []
    with borrowed(model, "jacobian_augmentation"):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev, dtype).requires_grad_(True)
            yb = y[i:i + batch_size].to(dev).long()
            picked = model(xb).float().gather(1, yb[:, None]).sum()  # sum of F_y(x) over rows
            (grad,) = torch.autograd.grad(picked, xb)
            out.append((xb.detach() + lam * grad.sign()).clamp_(0, 1).float().cpu())
    return torch.cat(out)


def transfer_success(oracle: Oracle, substitute_model: nn.Module | Substitute, x: Tensor,
                     y: Tensor, *, attack: Any = "fgsm", eps: float | Sequence[float] = 0.3,
                     clean_labels: Tensor | None = None, batch_size: int = 500,
                     **options: Any) -> dict[str, Any]:
    """Craft adversarial examples on the substitute and ask the oracle about them.

    Papernot et al. 2017, arXiv 1602.02697, section 5: transferability of examples crafted
    on the substitute to the target, scored with the target's labels only.

    Args:
        oracle: the :class:`Oracle` over the target (its queries are counted).
        substitute_model: the model to attack (or a :class:`Substitute`).
        x: images (N, C, H, W) in [0, 1] (not the seeds, for a fair figure).
        y: their true labels (N,).
        attack: any robustkit attack (a registered name, ``module:function``, a function
            or a torchattacks object: :func:`robustkit.attacks.bind`).
        eps: the radius, or a list of radii (one attack and N queries per radius).
        clean_labels: the oracle's labels of ``x`` (N,) from an earlier query; None: asked
            here (N queries).
        batch_size: images per attack call.
        options: the attack's own options (e.g. ``steps=10``); a seed reaches attacks
            that take one per example (by its index in ``x``).

    Returns:
        A dict: ``attack``, ``options``, ``n``, ``eps``, ``clean_accuracy`` (the oracle's,
        on true labels), ``clean_correct`` (how many), ``adversarial_accuracy`` (the
        oracle's on the transferred examples), ``transfer_success`` (the fraction of the
        examples the oracle labels correctly clean whose transfer it mislabels; None if it
        labels none correctly), ``fooled`` (how many) and ``queries`` (spent by this call).
        With a list of eps, ``eps``, ``adversarial_accuracy``, ``transfer_success`` and
        ``fooled`` are lists, one per radius.

    Example:
        >>> r = transfer_success(oracle, sub.model, x, y, attack="pgd", eps=[0.1, 0.3],
        ...                      steps=10)                                  # doctest: +SKIP
        >>> r["adversarial_accuracy"]                                       # doctest: +SKIP
        [0.71, 0.12]
    """
    # long function: the docstring documents the returned fields; checks come first.
    what = "transfer_success"
    model = substitute_model.model if isinstance(substitute_model, Substitute) \
        else substitute_model
    k = _check_oracle(oracle, what)
    if isinstance(model, Oracle) or not isinstance(model, nn.Module):
        raise RobustkitError(f"{what}: substitute_model must be the attacker's own model (an "
                             f"nn.Module that is not an Oracle: the oracle gives no gradients)")
    _check_images(x, y, oracle, k, "x", "y", what)
    check_positive_int(batch_size, what, "batch_size")
    grid = isinstance(eps, Sequence) and not isinstance(eps, str)
    radii = [check_eps(e, what) for e in (eps if grid else [eps])]  # type: ignore[union-attr]
    if not radii:
        raise RobustkitError(f"{what}: eps is an empty list")
    bound = bind(attack, model, options, eps=radii[0], what=what)
    n = len(x)
    if clean_labels is not None:
        if not isinstance(clean_labels, torch.Tensor) or clean_labels.shape != (n,) \
                or clean_labels.is_floating_point():
            raise RobustkitError(f"{what}: clean_labels must be the oracle's integer labels "
                                 f"(N,) of x, N = {n}")
        check_labels(clean_labels, k, f"{what}: clean_labels")
    plan = n * len(radii) + (n if clean_labels is None else 0)
    if oracle.remaining is not None and oracle.remaining < plan:
        raise RobustkitError(f"{what}: needs {plan:,} queries but the oracle has "
                             f"{oracle.remaining:,} left")
    y = y.detach().cpu().long()
    before = oracle.queries
    clean = (oracle.labels(x) if clean_labels is None else clean_labels).detach().cpu().long()
    right = clean == y  # (N,)
    dev = model_device(model, x)
    adv_acc, success, fooled = [], [], []
    for e in radii:
        run = bound.at(e)
        adv = torch.empty(n, dtype=torch.long)
        for b in batches((x, y), batch_size, what=what):
            x_adv = run(b.x.to(dev), b.y.to(dev), b.index)
            adv[b.index] = oracle.labels(x_adv).cpu()
        hit = right & (adv != y)
        adv_acc.append((adv == y).float().mean().item())
        fooled.append(int(hit.sum()))
        success.append(fooled[-1] / int(right.sum()) if right.any() else None)
    if not right.any():
        warnings.warn(f"{what}: the oracle labels none of the {n} clean images correctly; "
                      f"transfer success is undefined (None)", stacklevel=2)
    one = (lambda v: v) if grid else (lambda v: v[0])
    return {"attack": bound.name, "options": dict(bound.options), "n": n, "eps": one(radii),
            "clean_accuracy": right.float().mean().item(), "clean_correct": int(right.sum()),
            "adversarial_accuracy": one(adv_acc), "transfer_success": one(success),
            "fooled": one(fooled), "queries": oracle.queries - before}


def _check_oracle(oracle: Any, what: str) -> int:
    """The oracle's number of classes; refuse anything but an :class:`Oracle`."""
    if not isinstance(oracle, Oracle):
        raise RobustkitError(
            f"{what}: oracle must be a robustkit.blackbox.Oracle, got {type(oracle).__name__}: "
            f"the oracle counts every query the attack spends (and keeps the target's weights "
            f"and logits out of the attacker's code); wrap the target: Oracle(model)")
    if oracle.num_classes is None:
        raise RobustkitError(f"{what}: the oracle does not know its number of classes yet; "
                             f"give Oracle(model, num_classes=K)")
    return oracle.num_classes


def _check_images(x: Any, y: Any, oracle: Oracle, k: int, xname: str, yname: str,
                  what: str) -> None:
    """Images in [0, 1] of the oracle's shape, and labels (if any) in [0, K)."""
    check_inputs(x, y, what=f"{what}: {xname}")
    if oracle.in_shape is not None and tuple(x.shape[1:]) != oracle.in_shape:
        raise RobustkitError(f"{what}: {xname} images are {tuple(x.shape[1:])} (C, H, W) but "
                             f"the oracle's target takes {oracle.in_shape}")
    if y is not None:
        check_labels(y, k, f"{what}: {yname}")


def _positive(value: Any, what: str, name: str) -> float:
    """A finite number > 0."""
    v = check_eps(value, what, name)
    if v <= 0:
        raise RobustkitError(f"{what}: {name} must be a finite number > 0, got {value!r}")
    return v


def _build(arch: str | nn.Module, arch_options: Mapping[str, Any] | None,
           in_shape: tuple[int, ...], k: int, seed: int, what: str) -> tuple[nn.Module, str]:
    """A fresh substitute from a spec (seeded), or a copy of a module; and its name."""
    if isinstance(arch, nn.Module):
        if isinstance(arch, Oracle):
            raise RobustkitError(f"{what}: arch must be the attacker's own model, not an Oracle")
        if arch_options:
            raise RobustkitError(f"{what}: arch_options apply to a model spec, not a module")
        return copy.deepcopy(arch), type(arch).__name__
    if not isinstance(arch, str):
        raise RobustkitError(f"{what}: arch must be a model spec (e.g. 'mlp') or an nn.Module, "
                             f"got {type(arch).__name__}")
    models.check_spec(arch)
    models.check_options(arch, arch_options or {})
    torch.manual_seed(seed)
    return models.create(arch, in_shape, k, **dict(arch_options or {})), arch


__all__ = ["MAX_SET_VALUES", "Substitute", "jacobian_augmentation", "planned_queries",
           "step_size", "substitute", "transfer_success"]
