"""The black-box attacks' only door to the model: counted, limited, gradient-free queries.

:class:`Queries` runs the model under ``torch.no_grad`` on rows of images that each belong
to one example of the attack's batch, charges one query per row to that example
(:func:`robustkit.core.cost.charge`) and refuses, before running, a call that would take
an example past its budget. :func:`draws_for` and :func:`draw_rows` give each example its
own random draws, so a seed gives the same result whatever the batch. Used by
:func:`robustkit.attacks.square.square` and
:func:`robustkit.attacks.hop_skip_jump.hop_skip_jump`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustkit.core.cost import charge
from robustkit.core.lending import as_logits, check_finite_logits, check_outputs
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError

Tensor = torch.Tensor


class Queries:
    """A black-box attack's only access to the model: counted, limited queries.

    Every call runs the model under ``torch.no_grad`` on rows of images, each row
    belonging to one example of the attack's batch of ``n``; it charges one query per row
    to that example (:func:`robustkit.core.cost.charge`) and raises ``RuntimeError``
    (a bug in the attack) before running the model if any example would go past
    ``budget`` queries. The first call's outputs are checked like a probe's
    (:func:`robustkit.core.lending.check_outputs`: logits (M, K), finite, K >= 2, a warning
    for probabilities) when ``scores``; a decision-based attack (``scores=False``) reads
    only the argmax, so its outputs are checked for shape and finiteness only (a
    label-only oracle's one-hot rows are fine). Later calls are checked for finiteness.

    Attributes:
        used: queries made per example, (n,) int64 on the CPU.
    """

    def __init__(self, model: nn.Module, n: int, budget: int, what: str, scores: bool) -> None:
        self.model, self.n, self.budget, self.what, self.scores = model, n, budget, what, scores
        self.used = torch.zeros(n, dtype=torch.long)
        self.first = True

    def left(self) -> Tensor:
        """Queries each example may still make, (n,) int64 on the CPU."""
        return self.budget - self.used

    def __call__(self, x: Tensor, rows: Tensor) -> Tensor:
        """Outputs (M, K) of the model on ``x`` (M, C, H, W); ``rows`` (M,) says which
        example of the batch each image belongs to (an example may own several rows)."""
        rows = rows.cpu()
        counts = torch.bincount(rows, minlength=self.n)
        if bool((self.used + counts > self.budget).any()):
            raise RuntimeError(f"{self.what}: an example would exceed its budget of "
                               f"{self.budget} queries (a bug in the attack)")
        with torch.no_grad():
            out = self._first(x) if self.first else self.model(x)
        if self.first and self.scores:
            logits = check_outputs(out, self.what)
        else:
            logits = as_logits(out, self.what)
            check_finite_logits(logits, self.what)
            if logits.shape[1] < 2:
                raise RobustkitError(f"{self.what}: the model returns {logits.shape[1]} "
                                     "logit per image; a classifier needs at least 2")
        self.first = False
        self.used += counts
        charge(self.n, rows=rows, queries=1)
        return logits if logits.dtype == torch.float64 else logits.float()

    def _first(self, x: Tensor) -> Any:
        """The first query, which stands in for the probe of
        :func:`robustkit.core.lending.model_contract`: images of a shape the model does not
        take are the user's mistake (RobustkitError), as there."""
        spec = getattr(self.model, "robustkit_spec", None)
        if spec is not None and tuple(spec["in_shape"]) != tuple(x.shape[1:]):
            raise RobustkitError(
                f"{self.what}: the model ({spec['name']}) takes images of shape "
                f"{tuple(spec['in_shape'])} (C, H, W), but x has {tuple(x.shape[1:])}")
        try:
            return self.model(x)
        except torch.cuda.OutOfMemoryError:  # the batch's size, not its shape (torch 2.2)
            raise
        except RuntimeError as err:
            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            raise RobustkitError(f"{self.what}: the model cannot run on images of shape "
                                 f"{tuple(x.shape[1:])}: {first}") from None


def draws_for(seed: int | ExampleSeeds | None, n: int, what: str
              ) -> torch.Generator | ExampleSeeds | None:
    """Where the random draws come from (see :func:`robustkit.attacks.base.generator`);
    per-example streams must be one per example of the batch of ``n``."""
    if isinstance(seed, ExampleSeeds):
        if len(seed) != n:
            raise RobustkitError(f"{what}: seed holds {len(seed)} per-example streams for "
                                 f"{n} examples")
        return seed
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def draw_rows(draws: torch.Generator | ExampleSeeds | None, rows: Tensor,
              shape: tuple[int, ...], like: Tensor, normal: bool = False) -> Tensor:
    """Uniform U(0, 1) (or standard normal) draws of shape (len(rows), *shape) on
    ``like``'s device and dtype; row ``i`` from example ``rows[i]``'s own stream when
    ``draws`` is :class:`ExampleSeeds`, so an example draws the same values whichever
    others share its batch. Drawn on the CPU: the same seed gives the same values on any
    device."""
    full = (len(rows), *shape)
    if isinstance(draws, ExampleSeeds):
        sub = draws.subset(rows.cpu())
        out = sub.randn(full, dtype=like.dtype) if normal else sub.rand(full, dtype=like.dtype)
    elif normal:
        out = torch.randn(full, generator=draws, dtype=like.dtype)
    else:
        out = torch.rand(full, generator=draws, dtype=like.dtype)
    return out.to(like.device)


__all__ = ["Queries", "draw_rows", "draws_for"]
