"""Finished blocks of a long evaluation, kept on disk so a killed run goes on where it was.

An evaluation walks its examples in aligned blocks (:mod:`robustkit.core.stream`); with a
:class:`BlockStore` each block's per-example records are written atomically the moment the
block is done, under a key naming the block. A run started again (with any number of
processes: blocks do not depend on it) reads the finished blocks back instead of
computing them. The store holds a fingerprint of the computation (attack, options, data,
model), and refuses blocks of another.

Example:
    >>> store = BlockStore("r.json.parts", {"attack": "pgd", "eps": 0.3})   # doctest: +SKIP
    >>> part = store.scope("pgd")                                          # doctest: +SKIP
    >>> part.get(0) is None                                                 # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
import json
import shutil
from urllib.parse import quote
from pathlib import Path
from typing import Any

import torch

from robustkit.core.distributed import barrier, is_main
from robustkit.core.io import read_json, write_atomic, write_json
from robustkit.errors import RobustkitError

Tensor = torch.Tensor


class BlockStore:
    """A folder of finished blocks for one computation, named by its fingerprint.

    Args:
        root: the folder (created when missing).
        fingerprint: plain JSON values that decide the results (the command, the attack
            and its options, the model's checksum, the data and the block size).
        fresh: delete what the folder holds first.
    """

    def __init__(self, root: str | Path, fingerprint: dict[str, Any], *,
                 fresh: bool = False, prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        if prefix:  # a scope of a store that checked its fingerprint already
            return
        # Under torchrun every rank opens the store: rank 0 alone clears and stamps it.
        if fresh and is_main():
            self.clear()
        stamp = self.root / "fingerprint.json"
        if is_main() and not stamp.exists():
            write_json(stamp, self.fingerprint)
        barrier()
        if stamp.exists():
            held = read_json(stamp, "resume state")
            if held != self.fingerprint:
                first = next((k for k in sorted({*held, *self.fingerprint})
                              if held.get(k) != self.fingerprint.get(k)), "?")
                raise RobustkitError(
                    f"{self.root} holds the finished blocks of another computation ({first} "
                    f"differs); delete it, or start over with --fresh")

    def scope(self, name: str) -> BlockStore:
        """The blocks of one part of the computation (one attack, one eps, one source)."""
        out = BlockStore(self.root, self.fingerprint, prefix=f"{self.prefix}{name}/")
        return out

    def _path(self, start: int) -> Path:
        # Each part of the scope %-encoded ("." too): a model named ".." stays inside.
        parts = [quote(part, safe="-_=").replace(".", "%2E")
                 for part in self.prefix.split("/") if part]
        return self.root.joinpath(*parts) / f"block-{start}.pt"

    def get(self, start: int) -> dict[str, Tensor] | None:
        """The records of the block starting at index ``start``, or None when it is not
        done (a damaged file counts as not done)."""
        path = self._path(start)
        if not path.exists():
            return None
        try:
            records = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated or damaged block: compute it again
            return None
        if not isinstance(records, dict) or "index" not in records:
            return None
        return records

    def put(self, start: int, records: dict[str, Tensor]) -> None:
        """Store the records of the block starting at ``start``, atomically."""
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in records.items()}, buffer)
        write_atomic(self._path(start), buffer.getvalue())

    def clear(self) -> None:
        """Delete the folder (after the result is written: nothing left to resume)."""
        if self.root.is_dir() and (self.root / "fingerprint.json").exists():
            shutil.rmtree(self.root)
