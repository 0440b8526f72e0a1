"""A collection: model weights as tokens at an fsspec URL, with a manifest that says what is there.

Layout at the root URL::

    manifest.json                 one record per model; written last, so it only names complete models
    shards/<id>.parquet           the model's tokens, one row per token
    layouts/<id>.json             how to turn the tokens back into the state dict
    kept/<id>.safetensors         tensors that are not tokenized (BatchNorm statistics, position embeddings...)

A collection has one token size and one mode, fixed when it is created, so every model in it speaks the
same token language. Adding a model that is already there (same content hash) does nothing. ``add`` is
all-or-nothing: if anything fails, the manifest is untouched and the files it wrote are removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from geosane import sources, storage
from geosane.autoencoder import Scale
from geosane.errors import GeoSANEError
from geosane.sources import ModelSource, content_sha256
from geosane.tokenizer import Layout, TokenizerConfig, Tokens, detokenize, tokenize
from geosane.version import software_versions

log = logging.getLogger(__name__)

FORMAT = "geosane.collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ID_LENGTH = 16


@dataclass
class ModelRecord:
    """One row of the manifest."""

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

    @property
    def shard(self) -> str:
        return f"shards/{self.id}.parquet"

    @property
    def layout_file(self) -> str:
        return f"layouts/{self.id}.json"

    @property
    def kept_file(self) -> str:
        return f"kept/{self.id}.safetensors"

    @classmethod
    def from_dict(cls, data: dict) -> ModelRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Manifest columns a ``--tag key=value`` sets directly; every other tag is kept free-form in ``tags``.
RECORD_TAGS = ("name", "family", "task", "modality", "bands", "in_chans", "num_classes", "licence")


def token_schema(token_size: int) -> pa.Schema:
    return pa.schema(
        [
            ("index", pa.int32()),
            ("layer", pa.int32()),
            ("within", pa.int32()),
            ("valid", pa.int32()),
            ("tokens", pa.list_(pa.float32(), token_size)),
        ]
    )


def tokens_to_table(tokens: Tokens) -> pa.Table:
    """One row per token: its 3-D position, the number of real values (the mask's prefix) and the values."""
    size = tokens.layout.token_size
    positions = tokens.positions.numpy()
    flat = pa.array(tokens.tokens.numpy().reshape(-1))
    return pa.Table.from_arrays(
        [
            pa.array(positions[:, 0].astype(np.int32)),
            pa.array(positions[:, 1].astype(np.int32)),
            pa.array(positions[:, 2].astype(np.int32)),
            pa.array(tokens.valid.numpy().astype(np.int32)),
            pa.FixedSizeListArray.from_arrays(flat, size),
        ],
        schema=token_schema(size),
    )


def table_to_tokens(table: pa.Table, layout: Layout, kept: dict[str, torch.Tensor]) -> Tokens:
    size = layout.token_size
    values = table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False, writable=True)
    tokens = torch.from_numpy(values.reshape(-1, size))
    positions = torch.from_numpy(
        np.stack([table.column(c).to_numpy() for c in ("index", "layer", "within")], axis=1).astype(np.int64)
    )
    valid = torch.from_numpy(table.column("valid").to_numpy().astype(np.int64))
    return Tokens(tokens, valid, positions, layout, kept)


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
    """The manifest row for a tokenized model; well-known tags override what the source said."""
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


class Collection:
    """Models as tokens at ``url``: read with ``records``/``tokens``/``export``, write with ``add``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    # ----------------------------------------------------------------------------------------- reading

    def _manifest(self) -> dict | None:
        url = storage.join(self.url, MANIFEST)
        if not storage.exists(url):
            return None
        try:
            manifest = json.loads(storage.read_bytes(url))
        except json.JSONDecodeError as exc:
            raise GeoSANEError(f"{url}: manifest is not valid JSON ({exc})") from exc
        if manifest.get("format") != FORMAT:
            raise GeoSANEError(f"{url}: not a GeoSANE collection manifest (format {manifest.get('format')!r})")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise GeoSANEError(f"{url}: collection format {manifest['version']} is newer than this GeoSANE reads")
        return manifest

    def exists(self) -> bool:
        return self._manifest() is not None

    def config(self) -> TokenizerConfig | None:
        manifest = self._manifest()
        return TokenizerConfig(manifest["token_size"], manifest["mode"]) if manifest else None

    def records(self) -> list[ModelRecord]:
        manifest = self._manifest()
        if manifest is None:
            raise GeoSANEError(f"{self.url}: no collection here ({MANIFEST} not found)")
        return [ModelRecord.from_dict(row) for row in manifest["models"]]

    def record(self, model: str) -> ModelRecord:
        """A model by id, unique id prefix, or unique name."""
        records = self.records()
        matches = [r for r in records if r.id == model] or [r for r in records if r.id.startswith(model)]
        matches = matches or [r for r in records if r.name == model]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise GeoSANEError(f"{self.url}: no model {model!r} (see `geosane collection ls {self.url}`)")
        raise GeoSANEError(f"{self.url}: {model!r} is ambiguous: {', '.join(r.id for r in matches[:5])}")

    def layout(self, record: ModelRecord) -> Layout:
        url = storage.join(self.url, record.layout_file)
        return Layout.from_dict(json.loads(storage.read_bytes(url)))

    def kept(self, record: ModelRecord) -> dict[str, torch.Tensor]:
        url = storage.join(self.url, record.kept_file)
        try:
            return load_safetensors(storage.read_bytes(url))
        except SafetensorError as exc:
            raise GeoSANEError(f"{url}: corrupt kept-tensor file ({exc})") from exc

    def tokens(self, model: str | ModelRecord) -> Tokens:
        record = model if isinstance(model, ModelRecord) else self.record(model)
        layout = self.layout(record)
        url = storage.join(self.url, record.shard)
        with storage.errors_named(url, "read"):
            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        if table.num_rows != layout.num_tokens:
            raise GeoSANEError(f"{url}: holds {table.num_rows} tokens, its layout expects {layout.num_tokens}")
        return table_to_tokens(table, layout, self.kept(record))

    def scale(self, model: str | ModelRecord) -> Scale:
        """The model's :class:`~geosane.autoencoder.Scale`: as stored at collect time, or computed from its tokens
        for a model collected before scales were stored."""
        record = model if isinstance(model, ModelRecord) else self.record(model)
        if record.token_mean is None or record.token_std is None:
            tokens = self.tokens(record)
            return Scale.of(tokens.tokens, tokens.valid)
        return Scale(torch.tensor(record.token_mean), torch.tensor(record.token_std))

    def export(self, model: str | ModelRecord) -> dict[str, torch.Tensor]:
        """The model's state dict, rebuilt from its tokens and kept tensors."""
        tokens = self.tokens(model)
        return detokenize(tokens.tokens, tokens.layout, tokens.kept)

    # ----------------------------------------------------------------------------------------- writing

    def add(
        self,
        sources: Iterable[ModelSource],
        config: TokenizerConfig | None = None,
        tags: dict[str, str] | None = None,
        total: int | None = None,
        progress: bool = True,
    ) -> list[ModelRecord]:
        """Tokenize and store models; returns the records of the models that were new.

        Files are written first under their content id, the manifest last; on any failure the files
        written by this call are removed and the previous manifest stays as it was.
        """
        manifest = self._manifest()
        stored = manifest_config = None
        if manifest is not None:
            manifest_config = TokenizerConfig(manifest["token_size"], manifest["mode"])
            stored = {row["id"] for row in manifest["models"]}
        config = config or manifest_config or TokenizerConfig()
        if manifest_config and manifest_config != config:
            raise GeoSANEError(
                f"{self.url}: collection uses token size {manifest_config.token_size} in {manifest_config.mode} "
                f"mode; cannot add models with token size {config.token_size} in {config.mode} mode"
            )
        stored = stored or set()
        added: list[ModelRecord] = []
        written: list[str] = []
        try:
            for source in tqdm(sources, total=total, desc="collect", unit="model", disable=not progress):
                record = self._add_one(source, config, tags or {}, stored, written)
                if record:
                    added.append(record)
                    stored.add(record.id)
            if added:
                self._write_manifest(manifest, config, added)
        except BaseException:
            for url in written:
                storage.remove(url)
            raise
        return added

    def _add_one(
        self, source: ModelSource, config: TokenizerConfig, tags: dict[str, str], stored: set[str], written: list[str]
    ) -> ModelRecord | None:
        tokens = tokenize(source.state_dict, config)
        record = make_record(source, tokens, config, tags)
        if record.id in stored:
            log.info("%s: already in the collection as %s, skipped", source.uri, record.id)
            return None
        for relative, write in (
            (record.shard, lambda h: pq.write_table(tokens_to_table(tokens), h, compression="zstd")),
            (record.layout_file, lambda h: h.write(json.dumps(tokens.layout.to_dict()).encode())),
            (record.kept_file, lambda h: h.write(save_safetensors({k: v.clone() for k, v in tokens.kept.items()}))),
        ):
            url = storage.join(self.url, relative)
            written.append(url)
            with storage.atomic_open(url) as handle:
                write(handle)
        log.debug("%s: %d tokens as %s", source.uri, record.num_tokens, record.id)
        return record

    def _write_manifest(self, manifest: dict | None, config: TokenizerConfig, added: list[ModelRecord]) -> None:
        manifest = manifest or {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "token_size": config.token_size,
            "mode": config.mode,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "models": [],
        }
        manifest["software"] = software_versions()
        manifest["models"] = manifest["models"] + [asdict(r) for r in added]
        storage.write_bytes(storage.join(self.url, MANIFEST), json.dumps(manifest, indent=1).encode())

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self.records())


def collect(
    uris: list[str],
    out: str,
    token_size: int | None = None,
    mode: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> tuple[list[ModelRecord], int]:
    """The collect stage: read the models that ``uris`` name (files, directories, ``s3://`` URLs, ``timm:`` names,
    ``pretrained:`` entries), tokenize them and add them to the collection at ``out``.

    The token size and mode default to the collection's (230 and dense for a new one). Returns the records of the
    models that were new and how many models the sources named.
    """
    found = sources.find(uris)
    collection = Collection(out)
    existing = collection.config() or TokenizerConfig()
    config = TokenizerConfig(existing.token_size if token_size is None else token_size, mode or existing.mode)  # type: ignore[arg-type]
    added = collection.add((model.read() for model in found), config, tags, total=len(found), progress=progress)
    return added, len(found)
