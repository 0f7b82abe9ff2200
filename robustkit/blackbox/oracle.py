"""The black-box target: a model reached only through an oracle that counts its queries.

Papernot, McDaniel, Goodfellow, Jha, Celik and Swami 2017, "Practical Black-Box Attacks
against Machine Learning" (arXiv 1602.02697) assume an attacker who can send images to a
hosted model and read its label (one *query* per image), nothing more. :class:`Oracle`
is that interface inside one Python process: an ``nn.Module`` with no parameters and no
buffers, whose forward pass returns the target's label (one-hot rows, ``output="label"``)
or its logits (``output="scores"``, for score-based attacks such as Square), counts one
query per image and refuses a call that would exceed a budget before running it.

The target model is held in a closure, not in an attribute or a submodule:
``oracle.parameters()``, ``state_dict()``, ``buffers()``, ``modules()`` and
``vars(oracle)`` do not show it, and in label mode no logit leaves the oracle. Python
cannot make the weights truly unreachable (a closure's cells, ``gc.get_referrers`` or
frame introspection reach any object in the process): the oracle keeps honest code
honest, it is not a security boundary.

Example:
    >>> oracle = Oracle(target, budget=5000)                  # doctest: +SKIP
    >>> oracle.labels(x[:10])                                 # doctest: +SKIP
    tensor([7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    >>> oracle.queries, oracle.remaining                      # doctest: +SKIP
    (10, 4990)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustkit.core import check_inputs, check_positive_int, model_device, model_dtype, modes_kept
from robustkit.core.lending import check_outputs
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: What an oracle returns per image: the predicted label (one-hot) or the logits.
OUTPUTS = ("label", "scores")


class QueryBudgetExceeded(RobustkitError):
    """A call to an :class:`Oracle` would exceed its query budget; it was not run."""


class Oracle(nn.Module):
    """A label-only (or score) oracle over a target model that counts its queries.

    Papernot et al. 2017, arXiv 1602.02697: the attacker's only access to the target.

    Args:
        model: the target, mapping (N, C, H, W) in [0, 1] to (N, K) logits. Kept in a
            closure (see the module docstring); it is run in eval mode under
            ``torch.no_grad`` on every call, and each submodule's mode is given back.
        output: ``"label"`` (default): one-hot rows (N, K) of the target's predicted
            class, label-only information; ``"scores"``: the target's logits (N, K).
        budget: the most queries (images) the oracle answers in all, or None (no limit).
            A call that would exceed it raises :class:`QueryBudgetExceeded` before the
            target runs, and the count stays as it was.
        batch_size: images per forward pass of the target (a call of any size is split).
        num_classes: the number of classes K; default the target's ``robustkit_spec``,
            else learned on the first call (None until then).

    Every call checks its images (finite, in [0, 1], rank 4), returns a detached tensor on
    the images' device and in their dtype, and counts one query per image. Copies of an
    oracle (``copy.deepcopy``) share the target, the count and the budget. The oracle does
    not charge :mod:`robustkit.core.cost`: an attack that queries it charges its own
    queries, so nothing is counted twice.

    Example:
        >>> oracle = Oracle(models.create("mlp"), budget=100)      # doctest: +SKIP
        >>> oracle(torch.rand(4, 1, 28, 28)).sum(1)                # doctest: +SKIP
        tensor([1., 1., 1., 1.])
    """

    def __init__(self, model: nn.Module, *, output: str = "label", budget: int | None = None,
                 batch_size: int = 500, num_classes: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise RobustkitError(f"Oracle: model must be an nn.Module, got "
                                 f"{type(model).__name__}")
        if isinstance(model, Oracle):
            raise RobustkitError("Oracle: model is already an Oracle; wrap the target itself")
        if output not in OUTPUTS:
            raise RobustkitError(f"Oracle: output must be one of {OUTPUTS}, got {output!r}")
        if budget is not None:
            check_positive_int(budget, "Oracle", "budget", minimum=0)
        check_positive_int(batch_size, "Oracle", "batch_size")
        spec = getattr(model, "robustkit_spec", None) or {}
        if num_classes is not None:
            check_positive_int(num_classes, "Oracle", "num_classes", minimum=2)
        elif spec.get("num_classes") is not None:
            num_classes = int(spec["num_classes"])
        in_shape = tuple(int(s) for s in spec["in_shape"]) if spec.get("in_shape") else None
        # The state lives in the closure too: read-only properties, shared by copies.
        state: dict[str, Any] = {"queries": 0, "num_classes": num_classes, "budget": budget}
        self._ask, self._state = _closure(model, state, batch_size)
        self.output = output
        self.batch_size = batch_size
        self.in_shape = in_shape
        # The target always answers in eval mode; the oracle says so, so that attacks run
        # on it (Square, HopSkipJump) do not warn about a model in train mode.
        self.eval()

    @property
    def queries(self) -> int:
        """Images answered so far (every call, by every copy of this oracle)."""
        return int(self._state()["queries"])

    @property
    def budget(self) -> int | None:
        """The most queries this oracle answers in all (None: no limit)."""
        return self._state()["budget"]

    @property
    def remaining(self) -> int | None:
        """Queries left under the budget (None: no budget)."""
        return None if self.budget is None else self.budget - self.queries

    @property
    def num_classes(self) -> int | None:
        """K, the number of classes (None while unknown: no call yet and no spec)."""
        k = self._state()["num_classes"]
        return None if k is None else int(k)

    def forward(self, x: Tensor) -> Tensor:
        """Ask the target about ``x`` (N, C, H, W) in [0, 1]; N queries.

        Returns:
            (N, K) in ``x``'s dtype and device, detached: one-hot rows of the predicted
            class (``output="label"``) or the logits (``output="scores"``).

        Raises:
            QueryBudgetExceeded: the call would exceed the budget (nothing runs).
            RobustkitError: bad images, or a target that does not return finite logits.
        """
        check_inputs(x, what="oracle")
        if self.in_shape is not None and tuple(x.shape[1:]) != self.in_shape:
            raise RobustkitError(f"oracle: the target takes images of shape {self.in_shape} "
                                 f"(C, H, W), got {tuple(x.shape[1:])}")
        n = len(x)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"oracle: a call of {n} queries would exceed the budget: {self.queries} of "
                f"{self.budget} used, {self.budget - self.queries} left")
        return self._ask(x, self.output == "label")

    def labels(self, x: Tensor) -> Tensor:
        """The target's labels (N,) int64 of ``x`` (N, C, H, W), on ``x``'s device; N queries."""
        return self(x).argmax(1)

    def extra_repr(self) -> str:
        budget = "none" if self.budget is None else f"{self.budget:,}"
        return f"output={self.output!r}, queries={self.queries:,}, budget={budget}"


def _closure(model: nn.Module, state: dict[str, Any], batch_size: int
             ) -> tuple[Callable[[Tensor, bool], Tensor], Callable[[], dict[str, Any]]]:
    """``(ask, state)``: functions that reach ``model`` and the count through a closure,
    so neither is an attribute of the oracle."""

    @torch.no_grad()
    def ask(x: Tensor, label: bool) -> Tensor:
        dev, dtype = model_device(model, x), model_dtype(model) or x.dtype
        out = []
        with modes_kept(model):
            for i in range(0, len(x), batch_size):
                try:
                    out_b = model(x[i:i + batch_size].to(dev, dtype))
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError as err:  # e.g. images of another shape than the target's
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    raise RobustkitError(f"oracle: the target cannot run on images of shape "
                                         f"{tuple(x.shape[1:])}: {first}") from None
                logits = check_outputs(out_b, "oracle")
                out.append(logits.float())
        logits = torch.cat(out)  # (N, K)
        k = state["num_classes"]
        if k is not None and logits.shape[1] != k:
            raise RobustkitError(f"oracle: the target returned {logits.shape[1]} logits per "
                                 f"image, but num_classes is {k}")
        state["num_classes"] = logits.shape[1]
        state["queries"] += len(x)
        if label:  # the label only: no logit leaves the oracle
            logits = nn.functional.one_hot(logits.argmax(1), logits.shape[1])
        return logits.to(x.device, x.dtype)

    def read() -> dict[str, Any]:
        return dict(state)  # a copy: the count changes only by answering

    return ask, read


__all__ = ["OUTPUTS", "Oracle", "QueryBudgetExceeded"]
