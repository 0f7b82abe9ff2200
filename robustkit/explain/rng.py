"""Seeding captum's random draws without disturbing the caller's random state.

captum draws SmoothGrad's noise, sensitivity's perturbations and infidelity's
perturbations from torch's global generator; ``nn.Module.reset_parameters`` does too.
:func:`seeded` seeds that generator for one block and restores the caller's state after.

Example:
    >>> with seeded(0, torch.device("cpu")):
    ...     a = torch.rand(2)
    >>> with seeded(0, torch.device("cpu")):
    ...     b = torch.rand(2)
    >>> bool((a == b).all())
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator (and ``device``'s, on CUDA) inside the block only."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
