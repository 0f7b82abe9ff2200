"""Name -> factory registries for models, datasets, attacks and explainers.

Configs and the CLI refer to things by name; a registry turns a name into a factory,
refuses duplicate names, and answers an unknown name with the list of valid ones.

Example:
    >>> reg = Registry("model")
    >>> @reg.register("tiny")
    ... def tiny():
    ...     return 1
    >>> reg.get("tiny")()
    1
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustkit.errors import RobustkitError

F = TypeVar("F")


class Registry(Generic[F]):
    """A mapping from names to factories, filled with the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that files ``factory`` under ``name``; a second use of a name is refused."""

        def decorate(factory: F) -> F:
            if name in self._entries:
                raise RobustkitError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            return factory

        return decorate

    def get(self, name: str) -> F:
        """The factory for ``name``; an unknown name raises with the valid names listed."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" (a list)
            valid = ", ".join(self.names())
            raise RobustkitError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
