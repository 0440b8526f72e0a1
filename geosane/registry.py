"""One kind of registry for everything GeoSANE looks up by name: datasets, bench initializations, rankings,
autoencoder sizes, the pretrained catalogue and the shipped autoencoders.

A :class:`Registry` is an ordered mapping from names to entries, filled where the entries are defined (directly, or
with :meth:`Registry.register` as a decorator), read with ``registry[name]``, whose error names what is known.
Tests parametrize over every entry of every registry (``tests/test_registry.py``), as timm's tests do.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, Mapping, TypeVar

from geosane.errors import GeoSANEError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``what`` names the kind in messages: ``"dataset"``)."""

    def __init__(self, what: str, entries: Mapping[str, T] | None = None) -> None:
        self.what = what
        self.entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; a name registered twice is a programming error.

        Args:
            name: its name.
            entry: the entry.

        Returns:
            The entry.
        """
        if name in self.entries:
            raise GeoSANEError(f"{self.what} {name!r} is registered twice")
        self.entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: register the decorated function or class as ``name``."""
        return lambda entry: self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        if name not in self.entries:
            close = difflib.get_close_matches(str(name), list(self.entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GeoSANEError(f"unknown {self.what} {name!r}{hint} (known: {', '.join(self.entries)})")
        return self.entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        """The entry of ``name``, or ``default`` for an unknown name.

        Args:
            name: the name.
            default: what an unknown name gives.

        Returns:
            The entry, or ``default``.
        """
        return self.entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self.entries)})"
