"""Randomness per example: example ``i``'s draws come from its own generator, seeded by
the run's seed and ``i``'s global index.

Then a result does not depend on the batch size, on which other examples share a batch,
or on how many processes share the work: a random start for example 17 is the same
whether it is attacked alone, in a batch of 500, or on the second of four GPUs.

Example:
    >>> draws = ExampleSeeds(0, torch.tensor([3, 17]))
    >>> a = draws.rand((2, 4))
    >>> b = ExampleSeeds(0, torch.tensor([17])).rand((1, 4))
    >>> torch.equal(a[1:], b)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor

_MASK = (1 << 63) - 1


def example_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for example ``index`` of a run seeded with ``seed``
    (SplitMix64's finalizer, so neighbouring indices get unrelated streams)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 0x632BE59BD9B4E019) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class ExampleSeeds:
    """One CPU generator per example; each call draws the next values of every example's
    own stream, so successive draws (restarts) stay per example too.

    Args:
        seed: the run's seed.
        index: the examples' global indices (B,).
    """

    def __init__(self, seed: int, index: Tensor | Sequence[int]) -> None:
        self.seed = int(seed)
        self.index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        self.generators = [torch.Generator().manual_seed(example_seed(self.seed, int(i)))
                           for i in self.index]

    def __len__(self) -> int:
        return len(self.generators)

    def _draw(self, fn: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        shape = tuple(shape)
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"per-example draws need shape (B, ...) with B = "
                             f"{len(self.generators)}, got {shape}")
        draw = getattr(torch, fn)
        return torch.stack([draw(shape[1:], generator=g, dtype=dtype)
                            for g in self.generators])

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """U(0, 1) draws of ``shape`` (B, ...), row ``b`` from example ``b``'s stream."""
        return self._draw("rand", shape, dtype)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """N(0, 1) draws of ``shape`` (B, ...), row ``b`` from example ``b``'s stream."""
        return self._draw("randn", shape, dtype)

    def subset(self, keep: Tensor) -> ExampleSeeds:
        """The streams of the kept examples (a mask or indices into this batch), as they
        are now (drawn values are not replayed)."""
        out = ExampleSeeds.__new__(ExampleSeeds)
        out.seed = self.seed
        rows = keep.nonzero().squeeze(1) if keep.dtype == torch.bool else keep
        out.index = self.index[rows]
        out.generators = [self.generators[int(r)] for r in rows]
        return out
