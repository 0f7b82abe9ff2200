"""Sharing an evaluation among processes with torch.distributed (torchrun).

Inside an initialized process group every evaluation keeps only its shard of the examples
(those whose global index ``% world == rank``, :class:`robustkit.core.stream.Shard`) and
gathers the per-example records of every rank afterwards, so each rank returns the whole
result, in example order. Outside a process group these are no-ops: one process, all
examples. gloo (CPU) and NCCL (GPU) both work: records travel as CPU tensors.

Example (``torchrun --nproc-per-node 2 script.py``)::

    torch.distributed.init_process_group("gloo")
    acc = robustkit.evaluate.robust_accuracy(model, x, y, "pgd", eps=0.3)  # same on every rank
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist

from robustkit.core.stream import Shard

Tensor = torch.Tensor


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_shard() -> Shard:
    """This process's shard: its rank among the group's processes (all examples alone)."""
    if not active():
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


def is_main() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return not active() or dist.get_rank() == 0


def gather(records: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every rank's per-example records, joined and put in example order.

    Args:
        records: name -> (M,) tensors for this rank's M examples, one of them ``index``
            (their global indices).

    Returns:
        name -> (N,) CPU tensors over every rank's examples, sorted by ``index``.
    """
    local = {k: v.detach().cpu() for k, v in records.items()}
    if active():
        parts: list[dict[str, Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        joined = {k: torch.cat([p[k] for p in parts if p is not None]) for k in local}
    else:
        joined = local
    order = torch.argsort(joined["index"], stable=True)
    return {k: v[order] for k, v in joined.items()}


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if active():
        dist.barrier()


def launched() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@contextmanager
def session() -> Iterator[None]:
    """A process group for the block when torchrun launched several processes and none
    exists yet: NCCL with CUDA (each process on its ``LOCAL_RANK`` GPU), gloo otherwise;
    destroyed at the end. Elsewhere it does nothing."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_map(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
              block: int = 32) -> Tensor:
    """``fn`` over the rows of ``(x, y)`` in aligned blocks of ``block`` rows, this rank's
    blocks only (:class:`robustkit.core.stream.Shard`), gathered in row order: on every
    rank the same tensor, bit for bit, as one process computing the same blocks, for an
    ``fn`` that treats each row alone (attributions, per-example scores)."""
    shard = current_shard()
    index, values = [], []
    for start, stop in shard.blocks(len(x), block):
        index.append(torch.arange(start, stop))
        values.append(fn(x[start:stop], y[start:stop]).detach().cpu())
    if not active():
        return torch.cat(values)
    if not values:  # fewer blocks than ranks: this rank sends an empty part
        shape = fn(x[:1], y[:1]).shape[1:]
        index, values = [torch.empty(0, dtype=torch.long)], [torch.empty(0, *shape)]
    return gather({"index": torch.cat(index), "value": torch.cat(values)})["value"]
