"""Data of any size, one batch at a time, each example with its global index.

Every evaluation takes ``data`` in one of three forms and walks it with :func:`batches`:

- a pair of tensors ``(x, y)``: images (N, C, H, W) and labels (N,);
- a map-style ``torch.utils.data.Dataset`` whose items are ``(image, label)``;
- any iterable of ``(x, y)`` batches, a ``DataLoader`` included (its order is the
  examples' order: do not shuffle an evaluation loader).

Each :class:`Batch` carries the examples' global indices (their position in ``data``), so
per-example randomness can be seeded by index (a result then depends neither on the batch
size nor on the number of processes) and per-example results can be put back in example
order. The examples are cut into aligned blocks of ``batch_size`` (block ``k`` holds the
indices ``[k * batch_size, (k + 1) * batch_size)``), each block one batch; with a
:class:`Shard`, a process keeps the blocks that belong to it (``k % world == rank``),
without shuffling. So every example is computed in the same batch, with the same
neighbours, whatever the number of processes: results are bit-identical, not just equal
up to the last float bit that a different batch composition would change.

Example:
    >>> for b in batches((x, y), 256):                          # doctest: +SKIP
    ...     b.index, b.x.shape, b.y.shape
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

from robustkit.errors import RobustkitError

Tensor = torch.Tensor
#: What an evaluation accepts as data.
Data = Any


@dataclass(frozen=True)
class Shard:
    """This process's part of the examples: the blocks ``k`` (of ``batch_size`` examples
    each) with ``k % world == rank``."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world):
            raise RobustkitError(f"shard: rank must be in [0, {self.world}), got {self.rank}")

    def blocks(self, n: int, block: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of this shard's blocks among ``n`` examples."""
        for k in range(self.rank, -(-n // block), self.world):
            yield k * block, min(n, (k + 1) * block)

    def owns(self, start: int, block: int) -> bool:
        """Whether the block starting at index ``start`` is this shard's."""
        return (start // block) % self.world == self.rank


@dataclass(frozen=True)
class Batch:
    """Examples with their global indices: ``index`` (B,) int64, ``x`` (B, C, H, W),
    ``y`` (B,)."""

    index: Tensor
    x: Tensor
    y: Tensor


def is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def size(data: Data) -> int | None:
    """The number of examples, or None when ``data`` is an iterable of unknown length."""
    if is_tensor_pair(data):
        return len(data[1])
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)
    return None


def _pair(item: Any, what: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        raise RobustkitError(f"{what}: data must yield (x, y) pairs, got {type(item).__name__}")
    x, y = item[0], item[1]
    if not isinstance(x, torch.Tensor):
        raise RobustkitError(f"{what}: images must be tensors, got {type(x).__name__}")
    y = torch.as_tensor(y)
    return x, y


def _from_dataset(data: Dataset, batch_size: int, shard: Shard, what: str
                  ) -> Iterator[Batch]:
    n = len(data)  # type: ignore[arg-type]
    for start, stop in shard.blocks(n, batch_size):
        items = [_pair(data[j], what) for j in range(start, stop)]
        yield Batch(torch.arange(start, stop), torch.stack([x for x, _ in items]),
                    torch.stack([y.reshape(()) for _, y in items]))


def _from_loader(data: DataLoader, batch_size: int, shard: Shard, what: str
                 ) -> Iterator[Batch]:
    """A DataLoader over a map-style dataset in order: each process loads only its own
    blocks (a Subset, with the loader's workers and collate function)."""
    dataset = data.dataset
    n = len(dataset)  # type: ignore[arg-type]
    mine = [i for start, stop in shard.blocks(n, batch_size) for i in range(start, stop)]
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size,
                        num_workers=data.num_workers, collate_fn=data.collate_fn,
                        pin_memory=data.pin_memory)
    yield from _aligned(loader, batch_size, Shard(), what, torch.tensor(mine, dtype=torch.long))


def _aligned(data: Iterable[Any], batch_size: int, shard: Shard, what: str,
             positions: Tensor | None = None) -> Iterator[Batch]:
    """Re-cut an iterable's own batches into aligned blocks of ``batch_size`` and keep
    this shard's. ``positions`` maps the iterable's running count to global indices (a
    Subset of blocks); by default the count is the index."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    held = seen = 0
    for item in data:
        x, y = _pair(item, what)
        if x.ndim == 3:  # an iterable of single examples: batches of one
            x, y = x[None], y.reshape(1)
        xs.append(x)
        ys.append(y.reshape(-1))
        held += len(x)
        while held >= batch_size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            block = _block(x_all[:batch_size], y_all[:batch_size], seen, positions, shard,
                           batch_size)
            if block is not None:
                yield block
            xs, ys = [x_all[batch_size:]], [y_all[batch_size:]]
            held -= batch_size
            seen += batch_size
    if held:
        block = _block(torch.cat(xs), torch.cat(ys), seen, positions, shard, batch_size)
        if block is not None:
            yield block


def _block(x: Tensor, y: Tensor, seen: int, positions: Tensor | None, shard: Shard,
           batch_size: int) -> Batch | None:
    index = torch.arange(seen, seen + len(x))
    if positions is not None:
        index = positions[index]
    elif not shard.owns(seen, batch_size):
        return None
    return Batch(index, x, y)


def batches(data: Data, batch_size: int, *, shard: Shard | None = None,
            what: str = "data") -> Iterator[Batch]:
    """Walk ``data`` in batches of at most ``batch_size`` examples of this shard.

    Args:
        data: ``(x, y)`` tensors, a map-style Dataset of ``(image, label)``, or an
            iterable of ``(x, y)`` batches (a DataLoader).
        batch_size: the examples per batch (the last may hold fewer): an iterable's own
            batches are re-cut into aligned blocks of this size.
        shard: keep only this process's examples (default: all).
        what: the entry point, for messages.

    Yields:
        :class:`Batch` objects in example order.
    """
    shard = shard or Shard()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobustkitError(f"{what}: batch_size must be an integer >= 1, got {batch_size!r}")
    if is_tensor_pair(data):
        x, y = data
        if len(x) != len(y):
            raise RobustkitError(
                f"{what}: batch-size mismatch: {len(x)} images but {len(y)} labels")
        for start, stop in shard.blocks(len(y), batch_size):  # views, no copy
            yield Batch(torch.arange(start, stop), x[start:stop], y[start:stop])
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) \
            and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        yield from _from_dataset(data, batch_size, shard, what)
        return
    if isinstance(data, DataLoader):
        sampler = getattr(data, "sampler", None)
        if data.batch_sampler is not None and not isinstance(sampler, SequentialSampler):
            raise RobustkitError(
                f"{what}: the DataLoader draws examples in a random or custom order "
                f"({type(sampler).__name__}); evaluations need a fixed order, so that "
                f"per-example results and seeds follow the examples (use shuffle=False)")
        if shard.world > 1 and hasattr(data.dataset, "__getitem__") \
                and data.batch_sampler is not None:
            yield from _from_loader(data, batch_size, shard, what)
            return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise RobustkitError(
            f"{what}: data must be (x, y) tensors, a Dataset or an iterable of (x, y) "
            f"batches (a DataLoader), got {type(data).__name__}")
    yield from _aligned(data, batch_size, shard, what)


def as_tensors(data: Data, what: str = "data") -> tuple[Tensor, Tensor]:
    """All of ``data`` as ``(x, y)`` tensors (for the functions that need every example
    at once); tensors are returned as they are."""
    if is_tensor_pair(data):
        return data[0], data[1]
    xs, ys = [], []
    for b in batches(data, 4096, what=what):
        xs.append(b.x)
        ys.append(b.y)
    if not xs:
        raise RobustkitError(f"{what}: data holds no examples")
    return torch.cat(xs), torch.cat(ys)
