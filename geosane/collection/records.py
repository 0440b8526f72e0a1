"""What a collection knows about each model: its record, its content id, and the tags a user sets."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import torch

from geosane.collection.sources import ModelSource, content_sha256
from geosane.errors import GeoSANEError
from geosane.tokenizer import Scale, TokenizerConfig, Tokens

__all__ = ["ID_LENGTH", "RECORD_TAGS", "ModelRecord", "make_record", "model_id", "parse_tags"]

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

    @classmethod
    def from_dict(cls, data: dict) -> ModelRecord:
        """A record from its JSON form; fields a newer GeoSANE added are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Manifest columns a ``--tag key=value`` sets directly; every other tag is kept free-form in ``tags``.
RECORD_TAGS = ("name", "family", "task", "modality", "bands", "in_chans", "num_classes", "licence")


def model_id(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of the weights: the same model always gets the same id."""
    return content_sha256(state_dict)[:ID_LENGTH]


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
