"""What an attack cost, per example: forward passes, backward passes and queries.

Attacks charge their model calls with :func:`charge`; whoever wants the bill opens a
:func:`metering` scope around the attack's call. Outside any scope a charge does nothing,
so attacks called directly pay nothing for the accounting.

- a *forward pass* is one example through the model (a batch of 64 is 64 forward passes);
- a *backward pass* is one example's gradient with respect to its input;
- a *query* is a forward pass made by a score- or decision-based (black-box) attack, the
  unit of their budgets; queries are counted in the forward passes too.

Costs are compared in PGD-40 equivalents (:func:`pgd40_equivalents`): one run of PGD with
40 steps is 40 forward and 40 backward passes per example, and a backward pass is counted
as two forward passes (its usual cost), so one PGD-40 is 120 forward-pass units.

Example:
    >>> with metering(4) as bill:
    ...     charge(4, forward=1)                       # one forward pass of the 4 examples
    ...     charge(4, rows=torch.tensor([0, 2]), forward=1, backward=1)
    >>> bill.forward.tolist(), bill.backward.tolist()
    ([2, 1, 2, 1], [1, 0, 1, 0])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

#: Forward-pass units of one PGD-40 run (40 forward + 40 backward passes, backward = 2).
PGD40_UNITS = 40 + 2 * 40


@dataclass
class Cost:
    """Per-example counts (N,) int64 of one or more attacks on N examples.

    Attributes:
        forward, backward, queries: counts per example (see the module docstring).
        unattributed: passes charged by attacks run on a different number of examples
            than the scope's (a nested call on a subset that did not say which rows):
            counted in total only, as ``(forward, backward, queries)``.
    """

    forward: Tensor
    backward: Tensor
    queries: Tensor
    unattributed: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def zeros(cls, n: int) -> Cost:
        z = torch.zeros(n, dtype=torch.long)
        return cls(z.clone(), z.clone(), z.clone())

    def __len__(self) -> int:
        return len(self.forward)

    def totals(self) -> dict[str, int]:
        """The counts summed over examples (unattributed ones included)."""
        f, b, q = self.unattributed
        return {"forward": int(self.forward.sum()) + f, "backward": int(self.backward.sum()) + b,
                "queries": int(self.queries.sum()) + q}

    def add_rows(self, rows: Tensor, other: Cost) -> None:
        """Add ``other`` (one count per row in ``rows``) into this cost's ``rows``."""
        rows = rows.cpu()
        self.forward.index_add_(0, rows, other.forward)
        self.backward.index_add_(0, rows, other.backward)
        self.queries.index_add_(0, rows, other.queries)
        self.unattributed = tuple(a + b for a, b in zip(self.unattributed, other.unattributed,
                                                        strict=True))  # type: ignore[assignment]


def pgd40_equivalents(forward: float | Tensor, backward: float | Tensor) -> float | Tensor:
    """Cost in runs of PGD-40: ``(forward + 2 * backward) / 120`` (see the module docstring)."""
    return (forward + 2 * backward) / PGD40_UNITS


_SCOPE: contextvars.ContextVar[Cost | None] = contextvars.ContextVar("robustkit_cost",
                                                                     default=None)


@contextlib.contextmanager
def metering(n: int) -> Iterator[Cost]:
    """Count, per example, what attacks on these ``n`` examples cost inside the block.

    Scopes nest: an inner scope's bill is added to the enclosing scope when both count
    the same examples, else to the enclosing scope's unattributed totals.
    """
    bill = Cost.zeros(n)
    token = _SCOPE.set(bill)
    try:
        yield bill
    finally:
        _SCOPE.reset(token)
        outer = _SCOPE.get()
        if outer is not None:
            if len(outer) == n:
                outer.add_rows(torch.arange(n), bill)
            else:
                t = bill.totals()
                outer.unattributed = (outer.unattributed[0] + t["forward"],
                                      outer.unattributed[1] + t["backward"],
                                      outer.unattributed[2] + t["queries"])


def metered() -> bool:
    """Whether a :func:`metering` scope is open (attacks may skip counting work if not)."""
    return _SCOPE.get() is not None


def charge(n: int, *, rows: Tensor | None = None, forward: int = 0, backward: int = 0,
           queries: int = 0) -> None:
    """Charge passes to the examples of an attack's batch of ``n`` examples.

    Args:
        n: the number of examples the attack was called with.
        rows: which of them (indices (M,) or a mask (n,)); None: all ``n``.
        forward, backward, queries: passes per charged example.
    """
    bill = _SCOPE.get()
    if bill is None:
        return
    if len(bill) != n:  # an attack called on another batch than the scope's
        m = n if rows is None else int(rows.sum() if rows.dtype == torch.bool else rows.numel())
        f, b, q = bill.unattributed
        bill.unattributed = (f + m * (forward + queries), b + m * backward, q + m * queries)
        return
    idx = torch.arange(n) if rows is None else rows.detach().cpu()
    if idx.dtype == torch.bool:
        idx = idx.nonzero().squeeze(1)
    if forward or queries:
        bill.forward.index_add_(0, idx, torch.full((len(idx),), forward + queries,
                                                   dtype=torch.long))
    if backward:
        bill.backward.index_add_(0, idx, torch.full((len(idx),), backward, dtype=torch.long))
    if queries:
        bill.queries.index_add_(0, idx, torch.full((len(idx),), queries, dtype=torch.long))


__all__ = ["PGD40_UNITS", "Cost", "charge", "metered", "metering", "pgd40_equivalents"]
