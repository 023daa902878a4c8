"""A named registry with loud failures: duplicates and unknown names raise and list what is known.

Out-of-tree entries come from the entry-point group given to the registry, loaded on first miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from ecosched.errors import RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    description: str
    factory: T


class Registry(Generic[T]):
    """Maps names to factories of one kind (policies, predictors, ...)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator: register `factory` under `name`; a second registration of a name raises."""

        def add(factory: T) -> T:
            self.add(name, description, factory)
            return factory

        return add

    def add(self, name: str, description: str, factory: T) -> None:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, description, factory)

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._load_plugins()
        entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
        return entry.factory

    def __contains__(self, name: str) -> bool:
        if name not in self._entries:
            self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            register = ep.load()
            register(self)
