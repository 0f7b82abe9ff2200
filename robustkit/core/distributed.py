"""Sharing an evaluation among processes with torch.distributed (torchrun).

Inside an initialized process group every evaluation keeps only its shard of the examples
(those whose global index ``% world == rank``, :class:`robustkit.core.stream.Shard`) and
gathers the per-example records of every rank afterwards, so each rank returns the whole
result, in example order. Outside a process group these are no-ops: one process, all
examples. gloo (CPU) and NCCL (GPU) both work: records travel as CPU tensors.

Example (``torchrun --nproc-per-node 2 script.py``)::

    torch.distributed.init_process_group("gloo")
    acc = robustkit.evaluate.robust_accuracy(model, x, y, "pgd", eps=0.3)  # same on every rank

Work that is not one evaluation shared by every rank, but each rank's own (the units of
``robustkit run``, which are spread over the ranks), runs inside :func:`alone`: there this
process is a world of one (no sharding, no gathering, it prints and writes). The ranks
then meet with :func:`exchange` (every rank's value, e.g. each one's error or None),
:func:`broadcast` (rank 0's value) and :func:`on_main` (rank 0 does something, every rank
learns how it went), so that a failure on one rank is raised on every rank rather than
leaving the others waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from robustkit.core.stream import Shard
from robustkit.errors import RobustkitError

Tensor = torch.Tensor
T = TypeVar("T")

#: True inside :func:`alone`: this process works as if it were the only one.
_ALONE: ContextVar[bool] = ContextVar("robustkit_alone", default=False)


def active() -> bool:
    """Whether this process is one of several in an initialized process group (and not
    working :func:`alone`)."""
    return (not _ALONE.get() and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank in the group (0 outside one, or :func:`alone`)."""
    return dist.get_rank() if active() else 0


def world() -> int:
    """The number of processes in the group (1 outside one, or :func:`alone`)."""
    return dist.get_world_size() if active() else 1


@contextmanager
def alone() -> Iterator[None]:
    """This process works as if it were the only one while inside: evaluations neither
    shard nor gather, :func:`is_main` holds, :func:`active` does not. For work that is
    this rank's own, such as one unit of ``robustkit run`` (its result then equals the
    one a single process computes, bit for bit). The helpers below then act alone too:
    call them outside, where every rank meets.

    Example:
        >>> with alone():
        ...     active()
        False
    """
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def exchange(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank;
    ``[value]`` outside a process group (or :func:`alone`).

    Example:
        >>> exchange({"done": 3})
        [{'done': 3}]
    """
    if not active():
        return [value]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return parts


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside a process group, or
    :func:`alone`)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], what: str) -> T:
    """``fn()`` run by rank 0 alone, its result on every rank; when it raises, rank 0
    raises its own error and every other rank a :class:`RobustkitError` quoting it (no
    rank is left waiting). Outside a process group (or :func:`alone`) it is ``fn()``.

    Args:
        fn: the work (writing a file, taking a lock ...); its result must be picklable.
        what: names the work in the other ranks' message.
    """
    if not active():
        return fn()
    result: Any = None
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # shared with every rank below, then raised here
            failure = err
    word = broadcast((result, None if failure is None else _describe(failure)))
    if failure is not None:
        raise failure
    if word[1] is not None:
        raise RobustkitError(f"{what} failed on rank 0: {word[1]}")
    return word[0]


def settle(error: BaseException | None, what: str = "") -> None:
    """Meet every rank, each with its own error or None; when any rank failed, every rank
    raises: a failed rank its own error, the others a :class:`RobustkitError` naming the
    first failed rank and quoting its ``what`` and message (e.g. ``rank 1 failed: unit
    attack/pgd/mlp/s0/eps0.1: ...``). Outside a process group (or :func:`alone`) it
    raises ``error``, if any.

    Args:
        error: this rank's error, or None when its work went well.
        what: names this rank's failed work for the others' message.
    """
    mine = None if error is None else (f"{what}: " if what else "") + _describe(error)
    errors = exchange(mine)
    if error is not None:
        raise error
    for r, message in enumerate(errors):
        if message is not None:
            raise RobustkitError(f"rank {r} failed: {message}")


def _describe(err: BaseException) -> str:
    """An error as one line for another rank: the message (with the type for a bug)."""
    return str(err) if isinstance(err, RobustkitError) else f"{type(err).__name__}: {err}"


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
