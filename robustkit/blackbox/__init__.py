"""Black-box attacks without the target's weights (Papernot et al. 2017, arXiv 1602.02697).

The target is reached only through an :class:`Oracle`, a parameter-free ``nn.Module``
that returns its labels (or logits) and counts its queries against a budget. The attacker
trains a :func:`substitute` on the oracle's labels of a few seed images grown by
Jacobian-based augmentation, crafts adversarial examples on it with any robustkit attack,
and :func:`transfer_success` measures how many of them fool the target.

Example:
    >>> from robustkit.blackbox import Oracle, substitute, transfer_success
    >>> oracle = Oracle(target)                                          # doctest: +SKIP
    >>> sub = substitute(oracle, x[:150], seed_y=y[:150])                # doctest: +SKIP
    >>> transfer_success(oracle, sub.model, x[150:], y[150:], eps=0.3)   # doctest: +SKIP
"""

from robustkit.blackbox.oracle import OUTPUTS, Oracle, QueryBudgetExceeded
from robustkit.blackbox.substitute import (Substitute, jacobian_augmentation, planned_queries,
                                           step_size, substitute, transfer_success)

__all__ = ["OUTPUTS", "Oracle", "QueryBudgetExceeded", "Substitute", "jacobian_augmentation",
           "planned_queries", "step_size", "substitute", "transfer_success"]
