"""Transfer attacks: craft adversarial examples on source models, score them on targets.

The course notes' claim: a perturbation found on one network often fools another, even
one the attacker never saw, trained on other data. :func:`transfer_matrix` measures that
for any set of models, attacking each source once and scoring every target on the result.

Example:
    >>> m = transfer_matrix({"mlp": mlp, "cnn": cnn}, {"mlp": mlp, "cnn": cnn}, x, y,
    ...                     attack="pgd", eps=0.2, steps=20)          # doctest: +SKIP
    >>> m["mlp"]["cnn"]        # accuracy of cnn on examples crafted on mlp   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustkit.attacks.binding import bind, check_options
from robustkit.core import check_eps, model_contract
from robustkit.errors import RobustkitError
from robustkit.core.resume import BlockStore
from robustkit.core.stream import batches
from robustkit.outcomes import as_data, outcomes

Tensor = torch.Tensor


class Ensemble(nn.Module):
    """A surrogate that averages its members' logits (optionally weighted).

    Liu, Chen, Liu and Song 2017, "Delving into Transferable Adversarial Examples and
    Black-box Attacks", arXiv 1611.02770: attacking an ensemble transfers better than
    attacking any one member.

    Args:
        models: the members, each mapping (N, C, H, W) in [0, 1] to (N, K) logits.
        weights: one non-negative weight per member (default equal); normalized to sum 1.

    Example:
        >>> ens = Ensemble([mlp, cnn], weights=[1, 2])     # doctest: +SKIP
        >>> ens(x).shape                                   # doctest: +SKIP
        torch.Size([16, 10])
    """

    weights: Tensor  # (M,) buffer, sums to 1

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None
                 ) -> None:
        super().__init__()
        if len(models) == 0:
            raise RobustkitError("Ensemble needs at least one model")
        w = torch.ones(len(models)) if weights is None else torch.as_tensor(
            [float(v) for v in weights])
        if len(w) != len(models) or (w < 0).any() or w.sum() <= 0:
            raise RobustkitError(
                f"Ensemble weights must be {len(models)} non-negative numbers with a positive sum")
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", w / w.sum())
        # Take the members' mode without changing theirs (nn.Module starts in train mode).
        self.training = any(m.training for m in models)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, K)
        logits = [w * m(x) for w, m in zip(self.weights.unbind(), self.members)]
        return torch.stack(logits).sum(0)


class TransferResult(dict):
    """The matrix ``result[source][target]`` = accuracy of target on source's examples.

    Attributes:
        eps: the radius.
        success: ``success[source][target]``, the transfer success rate among the examples
            that both source and target classify correctly (the usual definition in papers;
            NaN where there are none).
        fooled: ``fooled[source][target]``, a bool tensor (N,): the examples crafted on
            source that target misclassifies.
        correct: ``correct[name]``, a bool tensor (N,): the clean examples each model
            classifies correctly.
        options: the options the attack received (the run's seed included), without eps.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.success: dict[str, dict[str, float]] = {}
        self.fooled: dict[str, dict[str, Tensor]] = {}
        self.correct: dict[str, Tensor] = {}
        self.options: dict[str, Any] = {}


def transfer_matrix(sources: Mapping[str, nn.Module], targets: Mapping[str, nn.Module],
                    x: Any, y: Tensor | None = None, *, attack: Any = "pgd",
                    eps: float | Sequence[float], batch_size: int = 500,
                    progress: bool = True, seed: int | None = None,
                    resume: BlockStore | None = None, **attack_kwargs: Any
                    ) -> TransferResult | dict[float, TransferResult]:
    """Accuracy of every target on adversarial examples crafted on every source.

    Each source is attacked once per eps (white-box, on itself) and its examples are
    scored on every target batch by batch (memory stays proportional to the batch); the
    diagonal (a model that is both source and target) is the white-box accuracy. When a
    transferred attack leaves a model less accurate than the white-box attack on that
    model, a warning says so: that is a sign of gradient masking or of a broken attack
    (Carlini et al. 2019). Attacks that measure a distance (DeepFool, C&W) take no eps
    and are refused.

    Args:
        sources, targets: non-empty name -> model mappings; all models must accept ``x``
            and return the same number of logits.
        x: images (N, C, H, W) in [0, 1] with true labels ``y`` (N,); or a Dataset or a
            DataLoader of ``(x, y)`` (then no ``y``). Streamed batch by batch; inside a
            process group each rank attacks its shard.
        attack: a registered name, ``module:function``, a function ``(model, x, y, **kw)``
            or a torchattacks object (its copy is set to each source).
        eps: one radius, or a list (then one result per eps).
        batch_size: images per attack call.
        seed: the seed of attacks that take one (random starts), unless ``attack_kwargs``
            gives one; ignored by attacks without a seed.
        resume: keep finished blocks there and read them back in a later call
            (:class:`robustkit.core.resume.BlockStore`): a killed run goes on where it was.
        attack_kwargs: the attack's options (``steps``, ``alpha`` ...).

    Returns:
        A :class:`TransferResult` (a ``dict[str, dict[str, float]]`` with per-example
        records), or ``{eps: TransferResult}`` when ``eps`` is a list.
    """
    data = as_data(x, y, "transfer_matrix")
    if not sources or not targets:
        raise RobustkitError("transfer_matrix needs at least one source and one target")
    eps_list = [check_eps(e, "transfer_matrix") for e in
                (eps if isinstance(eps, (list, tuple)) else [eps])]
    if not eps_list:
        raise RobustkitError("transfer_matrix: eps must hold at least one value")
    check_options(attack, attack_kwargs, grid=True, what="transfer_matrix")
    models = {**{f"source {k}": m for k, m in sources.items()},
              **{f"target {k}": m for k, m in targets.items()}}
    first_batch = next(batches(data, 2, what="transfer_matrix"), None)
    if first_batch is None:
        raise RobustkitError("transfer_matrix: the data holds no examples")
    _check_compatible(models, first_batch.x)
    first = next(iter(sources.values()))
    bound = bind(attack, first, attack_kwargs, eps=eps_list[0], what="transfer_matrix",
                 defaults={} if seed is None else {"seed": seed})
    clean = outcomes(data, {**sources, **targets}, None, batch_size=batch_size,
                     what="transfer_matrix",
                     resume=resume.scope("clean") if resume is not None else None)
    correct = clean.clean  # name -> (N,) bool, in example order
    results = {}
    for e in eps_list:
        result = TransferResult(e)
        result.correct = correct
        result.options = dict(bound.options)
        for s_name, source in sources.items():
            adv_ok = outcomes(data, dict(targets), bound.on(source).at(e),
                              batch_size=batch_size, progress=progress,
                              what="transfer_matrix", clean=False,
                              resume=(resume.scope(f"{s_name}/eps{e!r}")
                                      if resume is not None else None)).adv  # {target: (N,)}
            result[s_name], result.success[s_name], result.fooled[s_name] = {}, {}, {}
            for t_name in targets:
                robust = correct[t_name] & adv_ok[t_name]
                both = correct[s_name] & correct[t_name]
                result[s_name][t_name] = robust.float().mean().item()
                result.fooled[s_name][t_name] = ~adv_ok[t_name]
                result.success[s_name][t_name] = (
                    (~adv_ok[t_name])[both].float().mean().item() if both.any()
                    else float("nan"))
        _warn_if_transfer_beats_white_box(result)
        results[e] = result
    return results if isinstance(eps, (list, tuple)) else results[eps_list[0]]


def _check_compatible(models: Mapping[str, nn.Module], x: Tensor) -> None:
    """Every model meets the model contract on x and returns the same number of classes."""
    classes = {name: model_contract(model, x, f"transfer_matrix: {name}")
               for name, model in models.items()}
    if len(set(classes.values())) > 1:
        raise RobustkitError(f"models disagree on the number of classes: {classes}")


def _warn_if_transfer_beats_white_box(result: TransferResult) -> None:
    for t_name in {t for row in result.values() for t in row}:
        if t_name not in result:  # the target is not also a source: no white-box figure
            continue
        white = result[t_name][t_name]
        for s_name, row in result.items():
            if s_name != t_name and row[t_name] < white - 0.01:
                warnings.warn(
                    f"examples crafted on {s_name!r} leave {t_name!r} at {row[t_name]:.3f} "
                    f"accuracy, below the white-box attack on {t_name!r} itself ({white:.3f}) "
                    f"at eps {result.eps}: suspect gradient masking or a broken attack",
                    stacklevel=3,
                )
