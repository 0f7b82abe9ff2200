"""Normalization as the first layer of every model, so inputs stay in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustkit.errors import RobustkitError


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std.

    Mean and std are buffers: they move with ``.to(device)`` and live in the state dict,
    and attacks and explainers never need to know them (eps is in [0, 1] pixel units).

    Args:
        mean, std: one value per channel (std > 0).

    Example:
        >>> Normalize([0.5], [0.5])(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise RobustkitError(f"mean and std need one value per channel and std > 0: {mean}, {std}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
