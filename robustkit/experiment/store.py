"""A run's finished units, each stored atomically the moment it finishes.

A unit is one piece of work (a trained model, one attack at one eps, one transfer
source ...) named by a key such as ``attack/pgd/mlp/s0/eps0.1``. Its record is a JSON
file and its arrays (images, attribution maps) an ``.npz`` beside it, both under
``units/``. Each file is written to a temporary name and renamed, and the record is
written last, so a unit whose record exists is complete: a run killed at any moment
leaves only whole units behind, and a rerun skips them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np


def key(*parts: str) -> str:
    """A unit key from its parts; each part is %-encoded, so any model name is a safe file
    name and a ``/`` inside a name cannot make a folder."""
    return "/".join(quote(str(p), safe="=.+@_-") for p in parts)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (non-finite floats become null)."""
    write_atomic(path, json.dumps(_finite(payload), indent=2, sort_keys=False).encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _finite(value.item())
    return value


class Store:
    """The units of one run folder.

    Example:
        >>> store = Store("reports/quickstart")                      # doctest: +SKIP
        >>> if not store.has("train/mlp/s0"):                        # doctest: +SKIP
        ...     store.put("train/mlp/s0", {"clean_accuracy": 0.97})
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.units = self.root / "units"

    def _path(self, key: str, suffix: str) -> Path:
        return self.units / f"{key}{suffix}"

    def has(self, key: str) -> bool:
        """Whether unit ``key`` finished."""
        return self._path(key, ".json").exists()

    def put(self, key: str, record: Mapping[str, Any],
            arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Store a finished unit: its arrays first, then its record (which marks it done)."""
        if arrays:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            write_atomic(self._path(key, ".npz"), buffer.getvalue())
        write_json(self._path(key, ".json"), {"key": key, **record})

    def get(self, key: str) -> dict[str, Any]:
        """The record of unit ``key``."""
        return json.loads(self._path(key, ".json").read_text())

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """The arrays stored with unit ``key`` (empty if none)."""
        path = self._path(key, ".npz")
        if not path.exists():
            return {}
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}

    def keys(self) -> Iterator[str]:
        """Every finished unit's key, sorted."""
        if not self.units.exists():
            return iter(())
        return iter(sorted(str(p.relative_to(self.units).with_suffix("")).replace(os.sep, "/")
                           for p in self.units.rglob("*.json") if not p.name.startswith(".")))
