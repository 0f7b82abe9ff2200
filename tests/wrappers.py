"""Model wrappers the tests share: counting passes, scaling logits."""

from __future__ import annotations

import torch
from torch import nn


class Counted(nn.Module):
    """``model`` with every example's forward and backward passes counted by hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forward_rows += len(x)
        if out.requires_grad:
            def seen(grad: torch.Tensor, n: int = len(x)) -> None:
                self.backward_rows += n
            out.register_hook(seen)
        return out


class Scaled(nn.Module):
    """``model``'s logits times ``factor``: the same predictions, a saturated softmax."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor
