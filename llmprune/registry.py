"""Name -> implementation registries for methods, refiners, quantizers and formats.

Registration happens through explicit imports in each package's ``__init__``; no entry points, no lazy strings.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserInputError


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    meta: dict = field(default_factory=dict)

    def __getattr__(self, key):  # entry.needs, entry.patterns, ...
        try:
            return self.meta[key]
        except KeyError:
            raise AttributeError(key) from None


class Registry:
    """A named table. ``get`` fails with a "did you mean" one-liner (as lm-eval's task lookup does)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta):
        def decorator(fn):
            if name in self._entries:
                raise RuntimeError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = Entry(name, fn, meta)
            return fn

        return decorator

    def add(self, name: str, obj: Any, **meta) -> Any:
        """Register a non-function object (e.g. a Format record)."""
        self.register(name, **meta)(obj)
        return obj

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(sorted(self._entries))}"
            raise UserInputError(f"unknown {self.kind} '{name}'; {hint}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
