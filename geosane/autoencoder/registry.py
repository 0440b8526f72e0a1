"""Shipped autoencoders: trained weights that install with the package and load by name (``geosane:small``), like
timm's pretrained tags.

Each lives in ``shipped/<name>/``: ``model.safetensors`` and ``config.json`` (as :meth:`Autoencoder.save` writes
them), ``anchors/`` (a small collection of zoo models that generation samples around, so that a query such as
``--anchors dataset=eurosat_rgb`` works without building a zoo), ``card.json`` (what it learned, how, how well, what
it never saw, its licence terms, and the SHA-256 of every other file), ``card.sha256`` (the card's own SHA-256) and
``CARD.md`` (the same, for people). Every load, by name or by path, checks the hashes (:func:`check_files`): a
missing, added or changed file is an error that names the file. ``benchmarks/ship_autoencoder.py``
writes a shipped folder from a training run and rebuilds one from its card.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from geosane.errors import GeoSANEError

__all__ = [
    "DEFAULT",
    "PREFIX",
    "SHIPPED",
    "card",
    "check_files",
    "file_hashes",
    "folder",
    "is_shipped",
    "is_shipped_folder",
    "names",
    "resolve",
]

PREFIX = "geosane:"
#: What ``generate``, ``embed`` and ``bench`` use when no autoencoder is named.
DEFAULT = "geosane:small"
SHIPPED = Path(__file__).parent / "shipped"
CARD = "card.json"
#: The card's own SHA-256, beside it (the card cannot list its own hash).
CARD_HASH = "card.sha256"
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
    check_files(path, url)
    return path


def is_shipped_folder(path: str) -> bool:
    """Whether a local folder is laid out as a shipped autoencoder (it has a card): then it is checked as one."""
    return "://" not in path and (Path(path) / CARD).is_file()


def check_files(path: Path, label: str) -> None:
    """A shipped autoencoder's folder against its card: the card against ``card.sha256``, then every other file
    against the card's hashes, none missing and none added.

    Args:
        path: the folder.
        label: how to name it in messages (``geosane:small``, or its path).

    Raises:
        GeoSANEError: the first file that differs, is missing or is not listed, named.
    """
    card_file, hash_file = path / CARD, path / CARD_HASH
    if not hash_file.is_file():
        raise GeoSANEError(f"{hash_file}: missing from the shipped autoencoder {label} (the card's own hash)")
    found_card = hashlib.sha256(card_file.read_bytes()).hexdigest()
    if hash_file.read_text().split()[0] != found_card:
        raise GeoSANEError(
            f"{card_file}: SHA-256 {found_card[:16]}... differs from {CARD_HASH}'s (the card of {label} was changed "
            "or damaged; reinstall GeoSANE)"
        )
    try:
        recorded = json.loads(card_file.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise GeoSANEError(f"{card_file}: not a shipped autoencoder's card ({exc})") from None
    found = file_hashes(path)
    for file in sorted(set(recorded) | set(found)):
        if file not in found:
            raise GeoSANEError(f"{path / file}: missing from the shipped autoencoder {label} (reinstall GeoSANE)")
        if file not in recorded:
            raise GeoSANEError(
                f"{path / file}: not part of the shipped autoencoder {label} (its card lists no such file)"
            )
        if found[file] != recorded[file]:
            raise GeoSANEError(
                f"{path / file}: SHA-256 {found[file][:16]}... differs from the card's {recorded[file][:16]}... "
                f"(the shipped autoencoder {label} was changed or damaged; reinstall GeoSANE)"
            )


def card(url: str) -> dict[str, Any]:
    """The card of a shipped autoencoder (``card.json``), unchecked: what it learned, how, and how well."""
    path = SHIPPED / url[len(PREFIX) :] / CARD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GeoSANEError(f"{path}: cannot read the card of {url} ({exc})") from exc


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` but the card and its hash, by relative POSIX path: what a card records."""
    hashes = {}
    own = (path / CARD, path / CARD_HASH)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p not in own and "__pycache__" not in p.parts):
        hashes[file.relative_to(path).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
