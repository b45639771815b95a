"""A small name → constructor registry shared by models and attention modules.

Entries carry metadata (family, supported spatial dims, one-line description and the
default keyword arguments that define the documented configuration), so listings and
tables are generated from the registry rather than kept by hand.

Each registry declares the **tags** an entry may carry (plain values such as a model's size
divisor or its auxiliary outputs) with the value an entry gets when it does not declare one;
an undeclared tag is an error at registration, so callers read ``entry.tags[name]`` instead of
guessing from constructor signatures or keeping tables keyed by entry names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered constructor and what is known about it."""

    name: str
    fn: Callable[..., Any]
    family: str = ""
    dims: tuple[int, ...] = (2, 3)
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)

    def build(self, **kwargs: Any) -> Any:
        """Call the constructor with the entry's defaults overridden by ``kwargs``."""
        return self.fn(**{**self.defaults, **kwargs})


class Registry:
    """Maps names (and aliases) to :class:`Entry` objects.

    ``tags`` maps every tag an entry may declare to the value it gets when it declares none.
    """

    def __init__(self, kind: str, tags: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self.tags: dict[str, Any] = dict(tags or {})
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        family: str = "",
        dims: Iterable[int] = (2, 3),
        description: str = "",
        defaults: dict[str, Any] | None = None,
        aliases: Iterable[str] = (),
        **tags: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a constructor under ``name`` (and ``aliases``)."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(
                Entry(
                    name=name,
                    fn=fn,
                    family=family,
                    dims=tuple(dims),
                    description=description or (fn.__doc__ or "").strip().split("\n")[0],
                    defaults=dict(defaults or {}),
                    aliases=tuple(aliases),
                    tags=dict(tags),
                )
            )
            return fn

        return deco

    def add(self, entry: Entry) -> None:
        """Register ``entry``; its tags are completed with the registry's defaults.

        Raises ``ValueError`` for a name or alias already taken and for an undeclared tag.
        """
        unknown = sorted(set(entry.tags) - set(self.tags))
        if unknown:
            raise ValueError(f"{self.kind} {entry.name!r}: unknown tag(s) {unknown}; "
                             f"known tags: {sorted(self.tags)}")
        entry = replace(entry, tags={**self.tags, **entry.tags})
        for key in (entry.name, *entry.aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def get(self, name: str) -> Entry:
        key = self._aliases.get(name, name)
        if key not in self._entries:
            close = fnmatch.filter(self.names(), f"*{name}*")
            hint = f" Did you mean one of {close}?" if close else ""
            raise KeyError(f"Unknown {self.kind} {name!r}. Known: {', '.join(self.names())}.{hint}")
        return self._entries[key]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered primary names, optionally filtered by a shell-style pattern."""
        names = sorted(self._entries)
        return fnmatch.filter(names, pattern) if pattern else names

    def entries(self, pattern: str | None = None) -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).build(**kwargs)
