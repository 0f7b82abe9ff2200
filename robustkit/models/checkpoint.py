"""Checkpoints that rebuild their model alone and can never run code.

A checkpoint is a dict of plain values and tensors: the registry name, the constructor
arguments, the state dict and metadata. :func:`load` reads it with
``torch.load(weights_only=True)``, which refuses any pickled object other than tensors
and containers, so a malicious file raises instead of executing its payload.

Example:
    >>> m = create("logistic")                              # doctest: +SKIP
    >>> save(m, "m.pt", dataset="mnist-5k", test_accuracy=0.91)   # doctest: +SKIP
    >>> load("m.pt").training                               # doctest: +SKIP
    False
"""

from __future__ import annotations

import os
import pickle
import platform
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.errors import RobustkitError
from robustkit.models.zoo import _plain, create

FORMAT = "robustkit-checkpoint"
FORMAT_VERSION = 1


def versions() -> dict[str, str | None]:
    """Versions of Python, torch and robustkit, and the git commit of the source tree."""
    from robustkit import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "robustkit": __version__,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the robustkit source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically (temporary file, then rename).

    Args:
        model: a module made by :func:`robustkit.models.create`.
        path: the destination file.
        metadata: plain values (numbers, strings, lists, dicts), e.g. dataset, train size,
            seed, epochs, test accuracy. Versions and the git commit are added.

    Returns:
        The path written.
    """
    spec = getattr(model, "robustkit_spec", None)
    if spec is None:
        raise RobustkitError("save needs a model made by robustkit.models.create")
    meta = {**versions(), **_plain(metadata)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **spec,
               "state_dict": state, "metadata": meta}
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's payload (a dict), checked; raises :class:`RobustkitError` if unusable."""
    p = Path(path)
    if not p.is_file():
        raise RobustkitError(f"checkpoint {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", _plain_text(err))
        if found or "weights_only" in str(err) and "GLOBAL" in str(err):
            what = found.group(1) if found else "a Python object"
            raise RobustkitError(
                f"checkpoint {p} holds {what}, which could run code when loaded; refused"
            ) from None
        raise RobustkitError(f"checkpoint {p} is corrupt or not a checkpoint "
                             f"({_plain_text(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            TypeError, AttributeError, IndexError) as err:
        raise RobustkitError(
            f"checkpoint {p} is corrupt or truncated ({type(err).__name__}: {_plain_text(err)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RobustkitError(f"{p} is not a robustkit checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise RobustkitError(
            f"checkpoint {p} has format version {payload.get('format_version')}, "
            f"this robustkit reads {FORMAT_VERSION}"
        )
    return payload


def _plain_text(err: BaseException) -> str:
    """The first line of an error message without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text.splitlines()[0] if text else "no detail"


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path``, on ``device``, in eval mode.

    Returns:
        The module, with ``robustkit_metadata`` holding the saved metadata.
    """
    payload = read(path)
    model = create(
        payload["name"], payload["in_shape"], payload["num_classes"],
        payload["mean"], payload["std"], **payload["options"],
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise RobustkitError(f"checkpoint {path}: weights do not fit the model ({err})") from None
    model.robustkit_metadata = payload["metadata"]
    return model.to(device).eval()
