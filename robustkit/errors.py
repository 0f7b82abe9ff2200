"""The one exception type for mistakes a user can fix (bad names, bad values, missing files)."""

from __future__ import annotations


class RobustkitError(ValueError):
    """A problem with the user's input, reported in one line.

    It subclasses ``ValueError`` so that ``except ValueError`` keeps working; the CLI
    prints its message and exits with status 2 instead of a traceback.
    """
