"""Normalization as the first layer of every model, so inputs stay in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustkit.errors import RobustkitError


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std.

    Mean and std are buffers: they move with ``.to(device)`` and live in the state dict,
    and attacks and explainers never need to know them (eps is in [0, 1] pixel units).

    Args:
        mean, std: one value per channel, finite (std > 0). A std buffer that is not
            (a tampered checkpoint) is refused by :func:`robustkit.models.load`.

    Example:
        >>> Normalize([0.5], [0.5])(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if (len(mean) != len(std) or not all(math.isfinite(s) and s > 0 for s in std)
                or not all(math.isfinite(m) for m in mean)):
            raise RobustkitError(f"mean and std need one value per channel, finite, and std > 0: "
                                 f"{list(mean)}, {list(std)}")
        shape = (1, -1, 1, 1)  # broadcasts over (N, C, H, W)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
