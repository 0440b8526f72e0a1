"""One syntax names things across GeoSANE: ``[scheme:]name[?key=value&key=value]``.

A prompt (``timm:resnet18?in_chans=13&num_classes=10``), a dataset (``cloudmask?holdout=landsat5``) and a bench
initialization with settings of its own (``generated?bandwidth=0.2``) are all read by :func:`parse_spec`, which
types each value as the caller declares it and names an unknown key, a key given twice or a value of the wrong type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from geosane.errors import GeoSANEError

__all__ = ["Spec", "int_or_ints", "parse_spec"]


def int_or_ints(text: str) -> int | tuple[int, ...]:
    """``"64"`` -> 64, ``"32,64"`` -> (32, 64): timm's size arguments."""
    values = tuple(int(v) for v in text.split(","))
    return values if "," in text else values[0]


@dataclass(frozen=True)
class Spec:
    """A parsed ``[scheme:]name[?key=value...]``: its options as given (text) and as typed."""

    scheme: str | None
    name: str
    options: dict[str, str] = field(default_factory=dict)
    typed: dict[str, Any] = field(default_factory=dict)

    def with_options(self, **options: Any) -> Spec:
        """The same spec with options set (as text; ``None`` leaves an option as it is)."""
        given = {k: str(v) for k, v in options.items() if v is not None}
        return replace(self, options={**self.options, **given})

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.options.items())
        return (f"{self.scheme}:" if self.scheme else "") + self.name + (f"?{query}" if query else "")


def parse_spec(text: str, scheme: str | None = None, options: Mapping[str, Callable[[str], Any]] | None = None) -> Spec:
    """Read ``[scheme:]name[?key=value&...]``.

    Args:
        text: what was given.
        scheme: the scheme it must have (``timm``), or None for a bare name (a dataset, an initialization).
        options: the keys it may take, each with the function that types its value (``int``, ``float``, ``str``);
            None takes any key as text.

    Returns:
        The spec.

    Raises:
        GeoSANEError: a missing scheme or name, an option that is not ``key=value``, a key given twice, an unknown
            key (the known ones listed) or a value its type refuses; every message starts with ``text``.
    """
    rest = text
    if scheme is not None:
        if not text.startswith(scheme + ":"):
            raise GeoSANEError(f"{text!r}: expected {scheme}:NAME[?key=value&...]")
        rest = text[len(scheme) + 1 :]
    name, _, query = rest.partition("?")
    if not name:
        raise GeoSANEError(f"{text!r}: no name before the options")
    given: dict[str, str] = {}
    for part in query.split("&") if query else ():
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise GeoSANEError(f"{text!r}: expected NAME[?key=value&...], got option {part!r}")
        if key in given:
            raise GeoSANEError(f"{text!r}: option {key!r} is given twice")
        given[key] = value
    typed: dict[str, Any] = dict(given)
    if options is not None:
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise GeoSANEError(f"{text!r}: unknown option(s) {unknown}; known: {', '.join(options) or 'none'}")
        for key, value in given.items():
            try:
                typed[key] = options[key](value)
            except ValueError:
                kind = getattr(options[key], "__name__", "value")
                raise GeoSANEError(f"{text!r}: option {key} must be {article(kind)}, got {value!r}") from None
    return Spec(scheme, name, given, typed)


def article(kind: str) -> str:
    """``int`` -> ``an int``; a type's name with its article, for messages."""
    readable = {"int": "integer", "int_or_ints": "integer or comma-separated integers", "float": "number"}
    word = readable.get(kind, kind)
    return ("an " if word[0] in "aeiou" else "a ") + word
