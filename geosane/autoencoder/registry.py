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

from pydantic import BaseModel, ConfigDict, ValidationError

from geosane.config import field_problems
from geosane.errors import GeoSANEError
from geosane.registry import Registry

__all__ = [
    "AUTOENCODERS",
    "AutoencoderCard",
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


#: The shipped autoencoders by ``geosane:NAME``: their folders inside the package (every folder with a card).
AUTOENCODERS: Registry[Path] = Registry(
    "shipped autoencoder", {PREFIX + card.parent.name: card.parent for card in sorted(SHIPPED.glob(f"*/{CARD}"))}
)


def names() -> list[str]:
    """The shipped autoencoders, as ``geosane:NAME``."""
    return list(AUTOENCODERS)


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
    if url not in AUTOENCODERS:
        raise GeoSANEError(f"no shipped autoencoder {url!r}; shipped: {', '.join(names()) or 'none'}")
    path = AUTOENCODERS[url]
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


class Part(BaseModel):
    """A part of a card: its fields only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ShippedSize(Part):
    """The autoencoder: its named size, settings and parameters."""

    size: str
    settings: dict[str, Any]
    parameters: int


class Training(Part):
    """How it was trained: the training settings, the step it stopped at and its metrics there."""

    config: dict[str, Any]
    step: int
    metrics: dict[str, Any]


class Learned(Part):
    """The collection it learned from (not shipped), at the version it read, with every model's record."""

    url: str
    version: int
    models: list[dict[str, Any]]


class Licences(Part):
    """The licences of the models it learned from, and the terms of the shipped weights."""

    models: dict[str, int]
    terms: str


class AnchorRule(Part):
    """Which zoo models ship as anchors."""

    rule: str
    count: int


class Reconstruction(Part):
    """How well it rebuilds the shipped anchors (by part: trained on, validation, held out)."""

    anchors: list[dict[str, Any]]
    float16_max_relative_change: float
    by_part: dict[str, Any]


class Reference(Part):
    """One held-out model whose reconstruction error the tests reproduce."""

    name: str
    id: str
    part: str
    normalized_error: float


class AutoencoderCard(Part):
    """A shipped autoencoder's card (``card.json``): what it learned, how, how well, what it never saw, its licence
    terms, and the SHA-256 of every other file of its folder. The JSON schema is ``docs/autoencoder-card.schema.json``.
    """

    url: str
    summary: str
    autoencoder: ShippedSize
    training: Training
    commands: list[str]
    collection: Learned
    licences: Licences
    anchors: AnchorRule
    reconstruction: Reconstruction
    reference: Reference
    datasets: list[dict[str, Any]]
    software: dict[str, str]
    files: dict[str, str]


def card(url: str) -> AutoencoderCard:
    """The card of a shipped autoencoder (``card.json``), read and typed (its hash is checked when the autoencoder
    loads): what it learned, how, and how well.

    Args:
        url: ``geosane:NAME``.

    Returns:
        The card.

    Raises:
        GeoSANEError: no such autoencoder, or a card that cannot be read or is not a card (the field named).
    """
    path = AUTOENCODERS[url] / CARD
    try:
        return AutoencoderCard.model_validate_json(path.read_text())
    except OSError as exc:
        raise GeoSANEError(f"{path}: cannot read the card of {url} ({exc})") from exc
    except ValidationError as exc:
        raise GeoSANEError(f"{path}: not a shipped autoencoder's card: " + "; ".join(field_problems(exc))) from None


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` but the card and its hash, by relative POSIX path: what a card records."""
    hashes = {}
    own = (path / CARD, path / CARD_HASH)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p not in own and "__pycache__" not in p.parts):
        hashes[file.relative_to(path).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
