"""Resumable training: what :func:`robustkit.train.fit` needs to go on after an interruption.

After every epoch ``fit(..., resume=PATH)`` writes the whole training state: weights,
optimizer, learning-rate schedule, gradient scaler, every random generator (the global
one that drives dropout, the shuffling and augmentation generator, the adversarial
random starts), the guard's last good weights and the history so far. It is written to
a temporary file and renamed, so a run killed at any moment leaves either the previous
epoch's state or the new one, never half a file. A later ``fit`` with the same
configuration starts from the epoch after the stored one and ends with the same weights
as a run that was never interrupted (bit for bit on the CPU; a test checks it).

The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, never pickled code. A state written for another configuration (other
training settings, seed, data size, adversarial method or model shape) is refused rather
than silently mixed in.

Example:
    >>> fit(model, train, test, epochs=40, resume="runs/m.resume")   # doctest: +SKIP
    # killed during epoch 23; the same call again trains epochs 23 to 40
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from robustkit.core import write_atomic
from robustkit.errors import RobustkitError
from robustkit.models.checkpoint import torch_load

#: Bumped when the stored layout changes; older files are refused.
FORMAT = 1


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, rename).

    Raises:
        RobustkitError: the file cannot be written (full disk, no permission), naming it.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The state stored at ``path`` (tensors on the CPU), or None when there is none.

    Raises:
        RobustkitError: the file is unreadable, of another format, or was written for
            another ``fingerprint`` (the training configuration); the message names the
            first difference.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch_load(path, "resume file")
    except RobustkitError as err:  # any unreadable file gets the same advice
        raise RobustkitError(f"{err}; delete it to train from the start") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RobustkitError(f"resume file {path} has another format; delete it to train "
                             f"from the start")
    stored = state.get("fingerprint", {})
    for key in sorted(set(stored) | set(fingerprint)):
        if stored.get(key) != fingerprint.get(key):
            raise RobustkitError(
                f"resume file {path} belongs to another training run ({key}: "
                f"{stored.get(key)!r} there, {fingerprint.get(key)!r} now); delete it or "
                f"resume into another path")
    return state
