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

from collections.abc import Mapping

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
