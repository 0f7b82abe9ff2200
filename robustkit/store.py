"""A run's finished units, each stored atomically the moment it finishes, and verified
whenever it is read.

A unit is one piece of work (a trained model, one attack at one eps, one transfer
source ...) named by a key such as ``attack/pgd/mlp/s0/eps0.1``. Its record is a JSON
file and its arrays (images, attribution maps) an ``.npz`` beside it, both under
``units/``. Each file is written to a temporary name and renamed, and the record is
written last, so a unit whose record exists is complete: a run killed at any moment
leaves only whole units behind, and a rerun skips them.

Every record carries the SHA-256 of its arrays file (``arrays_sha256``) and the robustkit
version and git commit that computed it (``computed_by``). :meth:`Store.check` tells why a
stored unit cannot be used (a record that is not JSON, an arrays file that is missing,
damaged or does not open, or another version or commit); the runner computes such a unit
again, with a warning naming it.

Example:
    >>> store = Store("reports/quickstart")                      # doctest: +SKIP
    >>> if store.check("train/mlp/s0") is not None:              # doctest: +SKIP
    ...     store.put("train/mlp/s0", {"clean_accuracy": 0.97})
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from robustkit.core import read_json, sha256, versions, write_atomic, write_json
from robustkit.errors import RobustkitError

#: The longest key part, in bytes, once %-encoded: it becomes a file name (at most 255).
MAX_PART_BYTES = 200

#: A fixed timestamp inside the arrays' zip file, so equal arrays give equal bytes (and
#: equal checksums) whenever they are written.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def part(name: Any) -> str:
    """One key part: %-encoded, so any name is one safe file name; a leading ``.`` is
    encoded too, so no part is ``.`` or ``..``."""
    text = quote(str(name), safe="=.+@_-")
    return "%2E" + text[1:] if text.startswith(".") else text


def key(*parts: Any) -> str:
    """A unit key from its parts; each part is %-encoded, so any model name is a safe file
    name and a ``/`` inside a name cannot make a folder."""
    return "/".join(part(p) for p in parts)


def provenance() -> dict[str, Any]:
    """What computes a unit now: the robustkit version and the git commit."""
    v = versions()
    return {"robustkit": v["robustkit"], "git_commit": v["git_commit"]}


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``arrays`` as a compressed ``.npz`` (what :func:`numpy.load` reads), byte for byte
    the same whenever the arrays are the same."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


class Store:
    """The units of one run folder.

    Args:
        root: the run folder; units live in ``root/units``.
        on_write: called with each path (relative to ``root``) before it is written, so
            the run folder knows what robustkit wrote there (``--fresh`` deletes only that).

    Example:
        >>> store = Store("reports/quickstart")                      # doctest: +SKIP
        >>> store.put("train/mlp/s0", {"clean_accuracy": 0.97})     # doctest: +SKIP
        >>> store.get("train/mlp/s0")["clean_accuracy"]              # doctest: +SKIP
        0.97
    """

    def __init__(self, root: str | os.PathLike,
                 on_write: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.units = self.root / "units"
        self.on_write = on_write

    def _path(self, key: str, suffix: str) -> Path:
        """The file of ``key``; refused if it would lie outside ``units/``."""
        path = self.units / f"{key}{suffix}"
        if any(p in ("", ".", "..") for p in key.split("/")):
            raise RobustkitError(f"unit key {key!r} has an empty, '.' or '..' part")
        try:
            path.resolve().relative_to(self.units.resolve())
        except ValueError:
            raise RobustkitError(f"unit {key!r}: {path} resolves outside {self.units}") from None
        return path

    def _write(self, path: Path, data: bytes) -> None:
        if self.on_write is not None:
            self.on_write(path.relative_to(self.root).as_posix())
        write_atomic(path, data)

    def put(self, key: str, record: Mapping[str, Any],
            arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Store a finished unit: its arrays first, then its record (which marks it done),
        with the arrays' checksum and the version and commit that computed it."""
        checksum = None
        if arrays:
            data = npz_bytes(arrays)
            self._write(self._path(key, ".npz"), data)
            checksum = sha256(data)
        else:
            self._path(key, ".npz").unlink(missing_ok=True)  # an earlier, damaged one
        payload = {"key": key, **record, "arrays_sha256": checksum,
                   "computed_by": provenance()}
        if self.on_write is not None:
            self.on_write(self._path(key, ".json").relative_to(self.root).as_posix())
        write_json(self._path(key, ".json"), payload)

    def exists(self, key: str) -> bool:
        """Whether a record of ``key`` is there (whole or not)."""
        path = self._path(key, ".json")
        return path.exists() or path.is_symlink()

    def check(self, key: str, *, current: bool = True) -> str | None:
        """Why the stored unit ``key`` cannot be used, or None when it can.

        Args:
            current: also require that this robustkit version and git commit computed it.
        """
        path = self._path(key, ".json")
        if not path.exists():
            return "it is missing"
        try:
            record, _ = self._read(key)
        except RobustkitError as err:
            return str(err)
        if current:
            made = record.get("computed_by")
            if made != provenance():
                return (f"it was computed by {_describe(made)}, not by this "
                        f"{_describe(provenance())}")
        return None

    def has(self, key: str) -> bool:
        """Whether unit ``key`` finished, is whole, and was computed by this version."""
        return self.check(key) is None

    def _read(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The record and arrays of ``key``, verified; one error naming the damaged file."""
        path = self._path(key, ".json")
        record = read_json(path, what="unit record")
        if not isinstance(record, dict) or record.get("key") != key:
            raise RobustkitError(f"unit record {path} is not the record of {key!r}")
        checksum = record.get("arrays_sha256")
        if checksum is None:
            return record, {}
        npz = self._path(key, ".npz")
        try:
            data = npz.read_bytes()
        except OSError as err:
            raise RobustkitError(f"unit arrays {npz} cannot be read: "
                                 f"{err.strerror or type(err).__name__}") from None
        if sha256(data) != checksum:
            raise RobustkitError(f"unit arrays {npz} do not match the checksum in its record "
                                 "(truncated or changed)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
                return record, {k: loaded[k] for k in loaded.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise RobustkitError(f"unit arrays {npz} cannot be opened: {err}") from None

    def get(self, key: str) -> dict[str, Any]:
        """The record of unit ``key``, verified (a damaged unit is one error naming it)."""
        return self._read(key)[0]

    def arrays(self, key: str, *, verify: bool = False) -> dict[str, np.ndarray]:
        """The arrays stored with unit ``key`` (empty if there is no arrays file).

        Args:
            verify: also check the record and the arrays' checksum, as the runner does
                before it reuses a unit (one error naming the damaged file). Without it a
                file that does not open raises numpy's own error, for the caller to name.
        """
        if verify:
            return self._read(key)[1]
        path = self._path(key, ".npz")
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def keys(self) -> Iterator[str]:
        """Every stored unit's key, sorted."""
        if not self.units.is_dir():
            return iter(())
        found = []
        for folder, dirs, files in os.walk(self.units):  # never follows links
            base = Path(folder).relative_to(self.units)
            found += [(base / f[:-5]).as_posix().removeprefix("./")
                      for f in files if f.endswith(".json") and not f.startswith(".")]
        return iter(sorted(found))


def _describe(made: Any) -> str:
    if not isinstance(made, dict):
        return "an unknown robustkit version"
    commit = made.get("git_commit")
    return f"robustkit {made.get('robustkit')}" + (f" at commit {commit[:12]}" if commit
                                                   else " (no git commit)")
