"""What a collection knows about each model: its record, its content id, and the tags a user sets."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import torch

from geosane.collection.sources import ModelSource, content_sha256
from geosane.errors import GeoSANEError
from geosane.scale import Scale
from geosane.tokenizer import TokenizerConfig, Tokens, first_nonfinite

__all__ = [
    "ID_LENGTH",
    "RECORD_TAGS",
    "ModelRecord",
    "check_finite",
    "make_record",
    "model_id",
    "ordered_id",
    "parse_tags",
]

ID_LENGTH = 16


@dataclass
class ModelRecord:
    """What a collection knows about one model (the `record` column of its row, as JSON)."""

    id: str
    name: str
    source: str
    source_sha256: str
    family: str
    task: str
    modality: str
    bands: list[str] | None
    in_chans: int | None
    num_classes: int | None
    num_params: int
    num_tokens: int
    token_size: int
    mode: str
    licence: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    added: str = ""
    token_mean: float | None = None  # the model's Scale: mean and std of its real token values (None: not stored)
    token_std: float | None = None
    aliases: list[str] = field(default_factory=list)  # ids the model had before (ordered_id, before a migration)

    @classmethod
    def from_dict(cls, data: dict) -> ModelRecord:
        """A record from its JSON form; fields a newer GeoSANE added are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Manifest columns a ``--tag key=value`` sets directly; every other tag is kept free-form in ``tags``.
RECORD_TAGS = ("name", "family", "task", "modality", "bands", "in_chans", "num_classes", "licence")


def model_id(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of the weights in a canonical order (names sorted; each tensor's name, dtype, shape and bytes):
    the same weights get the same id whatever file format or tensor order they came in."""
    return content_sha256(dict(sorted(state_dict.items())))[:ID_LENGTH]


def ordered_id(state_dict: dict[str, torch.Tensor]) -> str:
    """The id GeoSANE 0.1 gave: the same hash in the file's own tensor order, so that a ``.pt`` and a
    ``.safetensors`` of one model got two ids. Collections made then keep it until ``geosane collection migrate``
    rewrites their ids (the old one stays, as an alias)."""
    return content_sha256(state_dict)[:ID_LENGTH]


def check_finite(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights with NaN or infinite values, naming the first such tensor: they would train the autoencoder
    to NaN, and generate nothing that works.

    Args:
        state_dict: a model's weights.
        where: what to call the model in the message (its file or URL).

    Raises:
        GeoSANEError: the first non-finite tensor, with how many of its values are not finite.
    """
    found = first_nonfinite(state_dict)
    if found:
        key, count, total = found
        raise GeoSANEError(
            f"{where}: tensor {key!r} has {count:,} non-finite value(s) (NaN or infinite) of {total:,}; "
            "pass --allow-nonfinite (allow_nonfinite=True) to collect it anyway"
        )


def parse_tags(pairs: Iterable[str]) -> dict[str, str]:
    """``["task=segmentation", "licence=MIT"]`` -> dict, with a clear error for a malformed pair."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GeoSANEError(f"tag {pair!r} is not of the form key=value")
        tags[key.strip()] = value.strip()
    return tags


def make_record(source: ModelSource, tokens: Tokens, config: TokenizerConfig, tags: dict[str, str]) -> ModelRecord:
    """The manifest row for a tokenized model; well-known tags override what the source said.

    Args:
        source: the model as read.
        tokens: its tokens.
        config: the token language.
        tags: ``--tag`` values of the collect call.

    Returns:
        The record.

    Raises:
        GeoSANEError: an ``in_chans`` or ``num_classes`` tag that is not an integer.
    """
    floats = [t for name, t in source.state_dict.items() if t.is_floating_point() and "running_" not in name]
    record = ModelRecord(
        id=model_id(source.state_dict),
        name=source.name,
        source=source.uri,
        source_sha256=source.sha256,
        family=source.family,
        task=source.task,
        modality=source.modality,
        bands=source.bands,
        in_chans=source.in_chans,
        num_classes=source.num_classes,
        num_params=sum(t.numel() for t in floats),
        num_tokens=tokens.layout.num_tokens,
        token_size=config.token_size,
        mode=config.mode,
        licence=source.licence,
        tags={k: v for k, v in {**source.tags, **tags}.items() if k not in RECORD_TAGS},
        metrics=dict(source.metrics),
        added=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    scale = Scale.of(tokens.tokens, tokens.valid)
    record.token_mean, record.token_std = float(scale.mean), float(scale.std)
    for key in RECORD_TAGS:
        text = tags.get(key)
        if text is None:
            continue
        value: Any = text
        if key in ("in_chans", "num_classes"):
            try:
                value = int(text)
            except ValueError as exc:
                raise GeoSANEError(f"tag {key}={text!r} must be an integer") from exc
        elif key == "bands":
            value = [b for b in text.split(",") if b]
        setattr(record, key, value)
    return record
