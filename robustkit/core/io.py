"""The one atomic file write, JSON in and out, and checksums.

Every file robustkit writes goes through :func:`write_atomic`: a temporary file in the
same folder, ``fsync``, then a rename, so a reader (or a run killed mid-write) sees the
old file or the new one, never half of one. A full disk or a read-only folder becomes
one :class:`RobustkitError` naming the path.

Example:
    >>> write_json(Path("out/r.json"), {"acc": float("nan")})   # doctest: +SKIP
    >>> read_json(Path("out/r.json"))                          # doctest: +SKIP
    {'acc': None}
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import RobustkitError


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Raises:
        RobustkitError: the folder cannot be made or written, or the disk is full.
    """
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as err:
        raise RobustkitError(f"cannot write {dest}: {_os_reason(err)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return dest


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only file system)"
    if err.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if err.errno == errno.EISDIR:
        return "it is a folder"
    return err.strerror or type(err).__name__


def finite(value: Any) -> Any:
    """``value`` with non-finite floats as None and numpy scalars as Python numbers
    (JSON has no NaN)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return finite(value.item())
    return value


def json_bytes(payload: Any) -> bytes:
    """``payload`` as indented JSON (non-finite floats become null)."""
    return json.dumps(finite(payload), indent=2, default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically (non-finite floats become null)."""
    return write_atomic(path, json_bytes(payload))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; a missing, unreadable or malformed file is one error naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RobustkitError(f"{what} {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RobustkitError(f"{what} {p} cannot be read: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RobustkitError(f"{what} {p} is not valid JSON (truncated or damaged?): "
                             f"{err.msg} at line {err.lineno}") from None


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _check_ancestors(p: Path, start: Path, what: str) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder."""
    for ancestor in [start, *start.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise RobustkitError(f"{what} {p}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise RobustkitError(f"{what} {p}: cannot write in {ancestor} "
                                     "(permission denied)")
            return


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that cannot be written: a folder, a
    path under a file, or a folder without write permission. Nothing is created."""
    p = Path(path)
    if p.is_dir():
        raise RobustkitError(f"{what} {p} is a folder; give a file path")
    _check_ancestors(p, p.parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise RobustkitError(f"{what} {p} exists and cannot be overwritten (permission denied)")
    return p


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, or
    cannot be written. Nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RobustkitError(f"{what} {p} is a file, not a folder")
    _check_ancestors(p, p, what)
    return p
