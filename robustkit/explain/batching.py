"""How many examples one forward pass may hold, and splitting a batch accordingly.

Attribution methods evaluate the model on many variants of each input (integrated
gradients: 50 steps; SmoothGrad: 25 noisy copies; occlusion: one copy per window).
captum's defaults put either all of them in one pass (integrated gradients: memory grows
with N x steps) or one per pass (occlusion: many small passes). robustkit sizes every
pass by memory instead: the activations of one example, measured by the probe, against
a budget per device.

The CPU budget keeps a pass near the last-level cache, where the measured optimum lies:
integrated gradients on 100 MNIST images of the benchmark alexnet (400 kB of activations
per image, so 166 images per pass) ran fastest at 100-200 examples per pass (2.3 s,
against 5.4 s for captum's single pass of 5,000 on 2 cores). The CUDA budget leaves most
of the GPU's free memory alone.

Example:
    >>> rows_per_pass(probe(model, x[:1]), torch.device("cpu"))   # doctest: +SKIP
    160
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from robustkit.explain.probe import Probe

#: Activation memory one forward pass may take, per device type.
BUDGET_BYTES = {"cpu": 64 * 2**20, "cuda": 2 * 2**30}
#: Fraction of the GPU's free memory that caps the CUDA budget.
CUDA_FREE_FRACTION = 0.25


def budget_bytes(device: torch.device) -> int:
    """Memory one pass (its activations, or a batch of perturbed copies) may take."""
    budget = BUDGET_BYTES.get(device.type, BUDGET_BYTES["cpu"])
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free * CUDA_FREE_FRACTION))
    return budget


def rows_per_pass(probe: Probe, device: torch.device) -> int:
    """Examples per forward pass whose activations fit the device's budget (at least 1)."""
    return max(1, budget_bytes(device) // max(1, probe.bytes_per_example))


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def split_options(options: dict[str, Any], part: slice, n: int) -> dict[str, Any]:
    """The options for examples ``part`` of ``n``: per-example tensors (first dimension n,
    e.g. a baseline per image) are sliced, everything else is passed whole."""
    return {k: v[part] if isinstance(v, torch.Tensor) and v.ndim > 0 and len(v) == n else v
            for k, v in options.items()}
