"""What produced a result: the versions of robustkit, torch and Python, and the git commit.

Example:
    >>> sorted(versions())
    ['git_commit', 'python', 'robustkit', 'torch']
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

__version__ = "0.1.0"


def versions() -> dict[str, str | None]:
    """Versions of Python, torch and robustkit, and the git commit of the source tree."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "robustkit": __version__,
        "git_commit": git_commit(),
    }


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the robustkit source tree, or None outside a git checkout.

    Cached: a process runs one commit (asked once, not once per unit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
