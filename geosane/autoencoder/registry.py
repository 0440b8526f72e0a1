"""Shipped autoencoders: trained weights that install with the package and load by name (``geosane:small``), like
timm's pretrained tags.

Each lives in ``shipped/<name>/``: ``model.safetensors`` and ``config.json`` (as :meth:`Autoencoder.save` writes
them), ``anchors/`` (a small collection of zoo models that generation samples around, so that a query such as
``--anchors dataset=eurosat_rgb`` works without building a zoo), ``card.json`` (what it learned, how, how well, what
it never saw, its licence terms, and the SHA-256 of every other file) and ``CARD.md`` (the same, for people).
Every load checks the hashes: a changed byte is an error that names the file. ``benchmarks/ship_autoencoder.py``
writes a shipped folder from a training run and rebuilds one from its card.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from geosane.errors import GeoSANEError

__all__ = ["DEFAULT", "PREFIX", "SHIPPED", "card", "file_hashes", "folder", "is_shipped", "names", "resolve"]

PREFIX = "geosane:"
#: What ``generate``, ``embed`` and ``bench`` use when no autoencoder is named.
DEFAULT = "geosane:small"
SHIPPED = Path(__file__).parent / "shipped"
CARD = "card.json"
ANCHORS = "anchors"


def names() -> list[str]:
    """The shipped autoencoders, as ``geosane:NAME``."""
    return sorted(PREFIX + p.parent.name for p in SHIPPED.glob(f"*/{CARD}"))


def resolve(url: str | None) -> str:
    """``url``, or the shipped default (:data:`DEFAULT`) where none is given."""
    return url or DEFAULT


def is_shipped(url: str) -> bool:
    """Whether ``url`` names a shipped autoencoder rather than a folder."""
    return url.startswith(PREFIX)


def folder(url: str) -> Path:
    """The folder of the shipped autoencoder ``url``, its files checked against the card's hashes.

    Args:
        url: ``geosane:NAME``.

    Returns:
        Its folder inside the package.

    Raises:
        GeoSANEError: no such name (the shipped ones listed), or a file missing, added or changed (named).
    """
    name = url[len(PREFIX) :]
    path = SHIPPED / name
    if not name or "/" in name or not (path / CARD).is_file():
        raise GeoSANEError(f"no shipped autoencoder {url!r}; shipped: {', '.join(names()) or 'none'}")
    recorded = card(url)["files"]
    found = file_hashes(path)
    for file in sorted(set(recorded) | set(found)):
        if file not in found:
            raise GeoSANEError(f"{path / file}: missing from the shipped autoencoder {url} (reinstall GeoSANE)")
        if file not in recorded:
            raise GeoSANEError(
                f"{path / file}: not part of the shipped autoencoder {url} (its card lists no such file)"
            )
        if found[file] != recorded[file]:
            raise GeoSANEError(
                f"{path / file}: SHA-256 {found[file][:16]}... differs from the card's {recorded[file][:16]}... "
                f"(the shipped autoencoder {url} was changed or damaged; reinstall GeoSANE)"
            )
    return path


def card(url: str) -> dict[str, Any]:
    """The card of a shipped autoencoder (``card.json``), unchecked: what it learned, how, and how well."""
    path = SHIPPED / url[len(PREFIX) :] / CARD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GeoSANEError(f"{path}: cannot read the card of {url} ({exc})") from exc


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` but the card, by relative POSIX path: what a card records."""
    hashes = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != CARD and "__pycache__" not in p.parts):
        hashes[file.relative_to(path).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
