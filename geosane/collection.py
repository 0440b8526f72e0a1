"""A collection: model weights as tokens at an fsspec URL, in one Lance table with atomic, versioned commits.

Layout at the root URL::

    models.lance/      one row per model: its id, record (JSON), layout (JSON), kept tensors (safetensors bytes),
                       tokens, real values per token and token positions, and a SHA-256 of each of those parts;
                       one data file per model

Lance writes a commit by putting a new manifest under a name no one else may take (a conditional put on S3, a
rename that refuses to overwrite on disk), so writers on many machines may add models at once: every ``add`` is
one commit and one *version*, a commit that races another is rebased and retried by Lance, never lost, and
readers see whole commits only. Creating the table is its own step (a first commit that is never retried, so
exactly one of racing creators wins), taken once the first model is ready. A failed ``add`` leaves no version: the
files it wrote are referenced by nothing. The table's schema holds the token language (token size and mode), fixed
when it is created, so every model speaks the same one.

Every read is checked: a model's parts are hashed when they are written and compared when they are read, and an
export also compares the rebuilt state dict with the model's id, which is a hash of the original weights; a
mismatch is an error that names the model and the data file. Two writers adding the same model at once both
commit it; readers keep the first row of each id. Collections in the first layout (a JSON manifest and one file
per model, ``geosane.legacy``) are read, and ``migrate`` copies one into the table format.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from geosane import legacy, sources, storage
from geosane.autoencoder import Scale
from geosane.errors import GeoSANEError
from geosane.sources import ModelSource, content_sha256
from geosane.tokenizer import Layout, TokenizerConfig, Tokens, detokenize, tokenize
from geosane.version import software_versions

log = logging.getLogger(__name__)

FORMAT = "geosane.collection"
FORMAT_VERSION = 2
TABLE = "models.lance"
ID_LENGTH = 16
#: one data file per model: Ray Data reads a file per task, so a collection's models are read (and cut into
#: windows) in parallel, and a damaged file damages one model
ROWS_PER_FILE = 1
#: the parts of a model that are hashed separately: a training read needs only the tokens
PARTS = ("record", "layout", "kept", "tokens")
#: every commit's message lists the ids it added after this, so a data file whose ids are damaged can be traced
IDS_FOLLOW = "; ids: "
COMMIT_MESSAGE = "__lance_commit_message"


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


#: One row per model. Token arrays are flat: ``tokens`` [N*T] float32, ``valid`` [N] and ``positions`` [N*3] int32.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("record", pa.string()),
        ("layout", pa.string()),
        ("kept", pa.large_binary()),
        ("tokens", pa.large_list(pa.float32())),
        ("valid", pa.list_(pa.int32())),
        ("positions", pa.list_(pa.int32())),
    ]
    + [(f"{part}_sha256", pa.string()) for part in PARTS]
)


def table_schema(config: TokenizerConfig) -> pa.Schema:
    """The table's schema, with the format and the token language in its metadata."""
    return SCHEMA.with_metadata(
        {"format": FORMAT, "version": str(FORMAT_VERSION), "token_size": str(config.token_size), "mode": config.mode}
    )


def token_arrays(tokens: Tokens) -> dict[str, np.ndarray]:
    """The flat arrays a row stores for ``tokens``."""
    return {
        "tokens": tokens.tokens.numpy().astype(np.float32, copy=False).reshape(-1),
        "valid": tokens.valid.numpy().astype(np.int32),
        "positions": tokens.positions.numpy().astype(np.int32).reshape(-1),
    }


def model_row(record_json: str, layout_json: str, kept: bytes, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A table row with the hashes of its parts."""
    return {
        "id": json.loads(record_json)["id"],
        "record": record_json,
        "layout": layout_json,
        "kept": kept,
        **arrays,
        "record_sha256": storage.sha256(record_json),
        "layout_sha256": storage.sha256(layout_json),
        "kept_sha256": storage.sha256(kept),
        "tokens_sha256": storage.tokens_sha256(arrays["tokens"], arrays["valid"], arrays["positions"]),
    }


def row_batch(row: dict[str, Any], schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        value = row[f.name]
        if isinstance(value, np.ndarray):  # one list cell without a Python list of its values
            offsets = pa.array([0, len(value)], pa.int64() if pa.types.is_large_list(f.type) else pa.int32())
            list_type = pa.LargeListArray if pa.types.is_large_list(f.type) else pa.ListArray
            arrays.append(list_type.from_arrays(offsets, pa.array(value, f.type.value_type)))
        else:
            arrays.append(pa.array([value], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def decode_tokens(row: dict[str, Any], layout: Layout, kept: dict[str, torch.Tensor]) -> Tokens:
    size = layout.token_size
    values = np.asarray(row["tokens"], dtype=np.float32).reshape(-1, size)
    positions = np.asarray(row["positions"], dtype=np.int64).reshape(-1, 3)
    valid = np.asarray(row["valid"], dtype=np.int64)
    return Tokens(torch.from_numpy(values.copy()), torch.from_numpy(valid), torch.from_numpy(positions), layout, kept)


ID_PATTERN = re.compile(r"^[0-9a-f]{1,64}$")


class Collection:
    """Models as tokens at ``url``: read with ``records``/``tokens``/``export``, write with ``add``.

    ``version`` pins the collection as it was at that commit (``None``: the latest, re-read on every call, so
    other writers' models appear)."""

    def __init__(self, url: str, version: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.table_url = storage.join(self.url, TABLE)
        self.pinned = version
        self.readable: list[int] | None = None  # set by verify: read only these fragments (the others are damaged)

    # ----------------------------------------------------------------------------------------- reading

    def dataset(self) -> Any:
        """The Lance dataset at the pinned version (or the latest); None where there is no table."""
        import lance

        options = storage.object_store_options(self.table_url)
        with self._named("open"):
            if not storage.exists(storage.join(self.table_url, "_versions")):
                return None
            try:
                return lance.dataset(self.table_url, version=self.pinned, storage_options=options)
            except (OSError, ValueError) as exc:
                if self.pinned is not None and "not found" in str(exc).lower():
                    raise GeoSANEError(
                        f"{self.url}: no version {self.pinned} (see `geosane collection versions`)"
                    ) from exc
                raise

    @contextmanager
    def _named(self, action: str, model: str = "", files: list[str] | None = None) -> Iterator[None]:
        """Any failure inside becomes a GeoSANEError naming the collection, the model and its data files."""
        try:
            with storage.errors_named(self.table_url, action):
                yield
        except GeoSANEError:
            raise
        except Exception as exc:  # Lance raises OSError/ValueError/RuntimeError with Rust detail
            where = f" model {model}" if model else ""
            in_files = f" (data file {', '.join(files)})" if files else ""
            detail = storage.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise GeoSANEError(f"cannot {action} {self.url}:{where}{in_files}: {detail}") from exc

    def _legacy(self) -> bool:
        return legacy.is_legacy(self.url)

    def _required(self) -> Any:
        dataset = self.dataset()
        if dataset is None and not self._legacy():
            raise GeoSANEError(f"{self.url}: no collection here ({TABLE} not found)")
        return dataset

    def exists(self) -> bool:
        if self.dataset() is not None:
            return True
        return self._legacy() and bool(legacy.read_manifest(self.url))

    def config(self) -> TokenizerConfig | None:
        dataset = self.dataset()
        if dataset is not None:
            metadata = {k.decode(): v.decode() for k, v in (dataset.schema.metadata or {}).items()}
            if metadata.get("format") != FORMAT:
                raise GeoSANEError(
                    f"{self.table_url}: not a GeoSANE collection table (format {metadata.get('format')!r})"
                )
            if int(metadata.get("version", 0)) > FORMAT_VERSION:
                raise GeoSANEError(
                    f"{self.url}: collection format {metadata['version']} is newer than this GeoSANE reads"
                )
            return TokenizerConfig(int(metadata["token_size"]), metadata["mode"])
        if self._legacy():
            manifest = legacy.read_manifest(self.url)
            return TokenizerConfig(manifest["token_size"], manifest["mode"])
        return None

    @property
    def version(self) -> int | None:
        """The table version read (None for a collection in the first layout)."""
        dataset = self._required()
        return None if dataset is None else dataset.version

    def versions(self) -> list[dict[str, Any]]:
        """Every commit: its version, time and number of models."""
        dataset = self._required()
        if dataset is None:
            return []
        with self._named("list versions of"):
            return [
                {
                    "version": v["version"],
                    "time": v["timestamp"].isoformat(timespec="seconds"),
                    "models": int(v["metadata"].get("total_rows", 0)),
                }
                for v in dataset.versions()
            ]

    def rows(self, dataset: Any, columns: list[str], where: str | None = None) -> pa.Table:
        """Rows in commit order, the first of each id only (two writers may commit the same model at once)."""
        fragments = None if self.readable is None else [dataset.get_fragment(i) for i in self.readable]
        try:
            scanner = dataset.scanner(
                columns=["id", *columns], filter=where, with_row_address=True, fragments=fragments
            )
            table = scanner.to_table()
        except Exception as exc:
            raise GeoSANEError(self._unreadable(dataset, exc)) from exc
        table = table.sort_by("_rowaddr")
        ids = table.column("id").to_pylist()
        seen: set[str] = set()
        first = [i for i, model in enumerate(ids) if not (model in seen or seen.add(model))]  # type: ignore[func-returns-value]
        return table.take(first) if len(first) < len(ids) else table

    def records(self) -> list[ModelRecord]:
        dataset = self._required()
        if dataset is None:
            return [ModelRecord.from_dict(row) for row in legacy.read_manifest(self.url)["models"]]
        table = self.rows(dataset, ["record", "record_sha256"])
        records = []
        for model, text, digest, address in zip(
            *(table.column(c).to_pylist() for c in ("id", "record", "record_sha256", "_rowaddr")), strict=True
        ):
            if storage.sha256(text) != digest:
                raise GeoSANEError(self._mismatch(dataset, model, "record", address))
            record = ModelRecord.from_dict(json.loads(text))
            if record.id != model:
                raise GeoSANEError(self._mismatch(dataset, model, "id", address))
            records.append(record)
        return records

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

    def data_files(self, dataset: Any, address: int) -> list[str]:
        """The files that hold the row at ``address`` (the fragment is the address's upper 32 bits)."""
        fragment = dataset.get_fragment(address >> 32)
        return [storage.join(self.table_url, "data", f.path) for f in fragment.data_files()] if fragment else []

    def _unreadable(self, dataset: Any, error: Exception) -> str:
        """Which data file cannot be read, and whose models it holds."""
        detail = storage.redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
        for fragment in dataset.get_fragments():
            try:
                fragment.to_table()
            except Exception:
                return self._bad_fragment(fragment, detail)
        return f"cannot read {self.url}: {detail}"

    def _bad_fragment(self, fragment: Any, detail: str) -> str:
        files = ", ".join(storage.join(self.table_url, "data", f.path) for f in fragment.data_files())
        try:
            ids = sorted(set(fragment.to_table(columns=["id"]).column("id").to_pylist()))
        except Exception:  # the ids are damaged too: the commit that wrote the file lists them
            ids = self._committed_ids(fragment)
        held = "model(s) " + ", ".join(ids) if ids else "models whose ids cannot be read either"
        return (
            f"{self.url}: data file {files} cannot be read ({detail}); it holds {held}; "
            f"`geosane collection verify {self.url}` lists every bad model"
        )

    def _committed_ids(self, fragment: Any) -> list[str]:
        """The ids of the models the commit that wrote ``fragment``'s files added, from its commit message."""
        paths = {f.path for f in fragment.data_files()}
        dataset = self.dataset()
        for transaction in dataset.get_transactions(dataset.version) if dataset else []:
            operation = getattr(transaction, "operation", None)
            written = {f.path for added in getattr(operation, "fragments", []) for f in added.files}
            if paths & written:
                message = transaction.transaction_properties.get(COMMIT_MESSAGE, "")
                return message.partition(IDS_FOLLOW)[2].split()
        return []

    def files_of(self, record: ModelRecord) -> list[str]:
        """The data files that hold the model's row (for a collection in the first layout, its files)."""
        dataset = self._required()
        if dataset is None:
            return list(legacy.part_urls(self.url, record.id).values())
        rows = self.rows(dataset, [], where=f"id = '{record.id}'")
        return self.data_files(dataset, rows.column("_rowaddr")[0].as_py()) if rows.num_rows else []

    def _mismatch(self, dataset: Any, model: str, part: str, address: int) -> str:
        files = ", ".join(self.data_files(dataset, address))
        return (
            f"{self.url}: model {model}: its {part} does not match what was written (data file {files}); "
            f"the collection is damaged: `geosane collection verify {self.url}` lists every bad model"
        )

    def _parts(self, record: ModelRecord, parts: tuple[str, ...]) -> dict[str, Any]:
        """One model's stored parts (``layout``, ``kept``, ``tokens``), each checked against its hash."""
        if not ID_PATTERN.match(record.id):
            raise GeoSANEError(f"{self.url}: {record.id!r} is not a model id")
        dataset = self._required()
        if dataset is None:
            return legacy.read_parts(self.url, record.id)
        columns = [c for part in parts for c in (("tokens", "valid", "positions") if part == "tokens" else (part,))]
        hashes = [f"{part}_sha256" for part in parts]
        table = self.rows(dataset, columns + hashes, where=f"id = '{record.id}'")
        if table.num_rows == 0:
            raise GeoSANEError(f"{self.url}: no model {record.id} in version {dataset.version}")
        address = table.column("_rowaddr")[0].as_py()
        with self._named("read", record.id, self.data_files(dataset, address)):
            row = {c: table.column(c)[0] for c in columns + hashes}
            out: dict[str, Any] = {}
            for part in parts:
                if part == "tokens":
                    arrays = {c: row[c].values.to_numpy(zero_copy_only=False) for c in ("tokens", "valid", "positions")}
                    actual = storage.tokens_sha256(arrays["tokens"], arrays["valid"], arrays["positions"])
                    out.update(arrays)
                else:
                    out[part] = row[part].as_py()
                    actual = storage.sha256(out[part])
                if actual != row[f"{part}_sha256"].as_py():
                    raise GeoSANEError(self._mismatch(dataset, record.id, part, address))
        return out

    def layout(self, record: ModelRecord) -> Layout:
        text = self._parts(record, ("layout",))["layout"]
        try:
            return Layout.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise GeoSANEError(f"{self.url}: model {record.id}: layout does not parse ({exc})") from exc

    def layouts(self, records: list[ModelRecord]) -> dict[str, Layout]:
        """Several models' layouts in one read."""
        dataset = self._required()
        if dataset is None:
            return {r.id: self.layout(r) for r in records}
        wanted = {r.id for r in records}
        table = self.rows(dataset, ["layout", "layout_sha256"])
        layouts = {}
        for model, text, digest, address in zip(
            *(table.column(c).to_pylist() for c in ("id", "layout", "layout_sha256", "_rowaddr")), strict=True
        ):
            if model in wanted:
                if storage.sha256(text) != digest:
                    raise GeoSANEError(self._mismatch(dataset, model, "layout", address))
                layouts[model] = Layout.from_dict(json.loads(text))
        return layouts

    def kept(self, record: ModelRecord) -> dict[str, torch.Tensor]:
        return self._kept(record, self._parts(record, ("kept",))["kept"])

    def _kept(self, record: ModelRecord, data: bytes) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors(data)
        except SafetensorError as exc:
            raise GeoSANEError(f"{self.url}: model {record.id}: corrupt kept tensors ({exc})") from exc

    def tokens(self, model: str | ModelRecord) -> Tokens:
        record = model if isinstance(model, ModelRecord) else self.record(model)
        parts = self._parts(record, ("layout", "kept", "tokens"))
        layout = Layout.from_dict(json.loads(parts["layout"]))
        if len(parts["valid"]) != layout.num_tokens or len(parts["tokens"]) != layout.num_tokens * layout.token_size:
            raise GeoSANEError(
                f"{self.url}: model {record.id} holds {len(parts['valid'])} tokens, "
                f"its layout expects {layout.num_tokens}"
            )
        return decode_tokens(parts, layout, self._kept(record, parts["kept"]))

    def scale(self, model: str | ModelRecord) -> Scale:
        """The model's :class:`~geosane.autoencoder.Scale`: as stored at collect time, or computed from its tokens
        for a model collected before scales were stored."""
        record = model if isinstance(model, ModelRecord) else self.record(model)
        if record.token_mean is None or record.token_std is None:
            tokens = self.tokens(record)
            return Scale.of(tokens.tokens, tokens.valid)
        return Scale(torch.tensor(record.token_mean), torch.tensor(record.token_std))

    def export(self, model: str | ModelRecord) -> dict[str, torch.Tensor]:
        """The model's state dict, rebuilt from its tokens and kept tensors, and checked against its id: the id is
        a hash of the weights that were collected, so an export is bit-exact or an error."""
        record = model if isinstance(model, ModelRecord) else self.record(model)
        tokens = self.tokens(record)
        state_dict = detokenize(tokens.tokens, tokens.layout, tokens.kept)
        if model_id(state_dict) != record.id:
            where = (
                ""
                if self.dataset() is not None
                else f" (files {', '.join(legacy.part_urls(self.url, record.id).values())})"
            )
            raise GeoSANEError(
                f"{self.url}: model {record.id} rebuilds to different weights than were collected{where}; "
                f"the collection is damaged: `geosane collection verify {self.url}` lists every bad model"
            )
        return state_dict

    def verify(self, progress: bool = True) -> list[str]:
        """Read and check every data file and every model (hashes, then the rebuilt weights against the id); one line
        per bad data file or model, naming the models and the files."""
        dataset = self._required()
        problems = []
        checker = Collection(self.url, None if dataset is None else dataset.version)
        if dataset is not None:  # a damaged file cannot hide the models of the others
            checker.readable = []
            for fragment in dataset.get_fragments():
                try:
                    fragment.to_table()
                    checker.readable.append(fragment.fragment_id)
                except Exception as exc:
                    problems.append(self._bad_fragment(fragment, storage.redact(str(exc).splitlines()[0])))
        try:
            records = checker.records()
        except GeoSANEError as exc:
            return [*problems, str(exc)]
        for record in tqdm(records, desc="verify", unit="model", disable=not progress):
            try:
                checker.export(record)
            except GeoSANEError as exc:
                problems.append(str(exc))
        return problems

    # ----------------------------------------------------------------------------------------- writing

    def create(self, config: TokenizerConfig, create_bucket: bool = False) -> TokenizerConfig:
        """Create the empty table with the token language ``config``, unless another writer already did; returns the
        collection's token language. Only one creator can win, so racing writers all end up adding to one table."""

        if self.dataset() is None:
            if self._legacy():
                raise GeoSANEError(
                    f"{self.url}: a collection in the first layout is read only; convert it with "
                    f"`geosane collection migrate {self.url}`"
                )
            storage.ensure_bucket(self.url, create=create_bucket)
            self._create_table(table_schema(config))
        existing = self.config()
        assert existing is not None
        return existing

    def _create_table(self, schema: pa.Schema) -> None:
        """Commit version 1, the empty table, without retrying: of racing creators exactly one wins and the others
        find its table. (``write_dataset(mode="create")`` retries a lost race as an overwrite, which would drop what
        the winner has appended since.)"""
        import lance

        try:
            lance.LanceDataset.commit(
                self.table_url,
                lance.LanceOperation.Overwrite(schema, []),
                read_version=0,
                max_retries=0,
                storage_options=storage.object_store_options(self.table_url),
            )
        except Exception as exc:
            if self.dataset() is None:  # not a lost race: a real failure
                with self._named("create"):
                    raise exc

    def add(
        self,
        sources: Iterable[ModelSource],
        config: TokenizerConfig | None = None,
        tags: dict[str, str] | None = None,
        total: int | None = None,
        progress: bool = True,
        create_bucket: bool = False,
    ) -> list[ModelRecord]:
        """Tokenize and store models in one commit; returns the records of the models that were new.

        Rows are streamed into data files as the models are read; the commit that makes them visible comes last,
        so a failure anywhere leaves the collection as it was."""

        if self.pinned is not None:
            raise GeoSANEError(f"{self.url}: version {self.pinned} is a past version; add to the latest instead")
        dataset = self.dataset()
        if dataset is None and self._legacy():
            raise GeoSANEError(
                f"{self.url}: a collection in the first layout is read only; convert it with "
                f"`geosane collection migrate {self.url}`"
            )
        existing = self.config()
        config = config or existing or TokenizerConfig()
        self._check_language(existing, config)
        if dataset is None:
            storage.ensure_bucket(self.url, create=create_bucket)
        stored = set() if dataset is None else set(dataset.to_table(columns=["id"]).column("id").to_pylist())
        read_version = None if dataset is None else dataset.version
        added: list[ModelRecord] = []
        failure: list[BaseException] = []

        def rows() -> Iterator[pa.RecordBatch]:
            try:
                for source in tqdm(sources, total=total, desc="collect", unit="model", disable=not progress):
                    tokens = tokenize(source.state_dict, config)
                    record = make_record(source, tokens, config, tags or {})
                    if record.id in stored:
                        log.info("%s: already in the collection as %s, skipped", source.uri, record.id)
                        continue
                    if not added and dataset is None:  # the table is made once there is a model to put in it
                        self._check_language(self.create(config, create_bucket), config)
                    kept = save_safetensors({k: v.contiguous() for k, v in tokens.kept.items()})
                    layout = json.dumps(tokens.layout.to_dict())
                    row = model_row(json.dumps(asdict(record)), layout, kept, token_arrays(tokens))
                    stored.add(record.id)
                    added.append(record)
                    yield row_batch(row, SCHEMA)
            except BaseException as exc:  # Lance would wrap it in an OSError of its own; keep what happened
                failure.append(exc)
                raise

        try:
            self._append(rows(), "added", added, read_version)
        except Exception:
            if failure:  # a model could not be read: say so, not what Lance made of it
                raise failure[0] from None
            raise
        return added

    def _check_language(self, existing: TokenizerConfig | None, config: TokenizerConfig) -> None:
        if existing and existing != config:
            raise GeoSANEError(
                f"{self.url}: collection uses token size {existing.token_size} in {existing.mode} "
                f"mode; cannot add models with token size {config.token_size} in {config.mode} mode"
            )

    def _append(
        self, rows: Iterator[pa.RecordBatch], message: str, added: list[ModelRecord], read_version: int | None = None
    ) -> None:
        """Stream ``rows`` into new data files, then commit them as one version (Lance rebases a commit that races
        another append and retries it). The commit message lists the ids added. Nothing is committed for no rows."""
        import lance

        options = storage.object_store_options(self.table_url)
        with self._named("write"):
            fragments = lance.fragment.write_fragments(
                pa.RecordBatchReader.from_batches(SCHEMA, rows),
                self.table_url,
                schema=SCHEMA,
                max_rows_per_file=ROWS_PER_FILE,
                storage_options=options,
            )
        if not added:
            return
        with self._named("commit"):
            lance.LanceDataset.commit(
                self.table_url,
                lance.LanceOperation.Append(fragments),
                read_version=self.dataset().version if read_version is None else read_version,
                storage_options=options,
                commit_message=f"geosane {software_versions()['geosane']}: {message} {len(added)} model(s){IDS_FOLLOW}"
                + " ".join(r.id for r in added),
            )

    def migrate(self, progress: bool = True) -> int:
        """Copy a collection in the first layout into the table format, at the same URL, in one commit; each model
        is checked (its rebuilt weights against its id) before it is copied. The old files are left as they were.
        Returns the number of models copied."""

        if self.dataset() is not None:
            raise GeoSANEError(f"{self.url}: already in the table format ({TABLE})")
        if not self._legacy():
            raise GeoSANEError(f"{self.url}: no collection here ({legacy.MANIFEST} not found)")
        manifest = legacy.read_manifest(self.url)
        config = TokenizerConfig(manifest["token_size"], manifest["mode"])
        records = self.records()
        bad = []
        for record in tqdm(records, desc="check", unit="model", disable=not progress):
            try:
                self.export(record)
            except GeoSANEError as exc:
                bad.append(str(exc))
        if bad:
            raise GeoSANEError(
                f"{self.url}: {len(bad)} model(s) do not read back; nothing migrated:\n  " + "\n  ".join(bad)
            )
        schema = table_schema(config)

        def rows() -> Iterator[pa.RecordBatch]:
            for record in records:
                parts = legacy.read_parts(self.url, record.id)
                arrays = {k: parts[k] for k in ("tokens", "valid", "positions")}
                yield row_batch(model_row(json.dumps(asdict(record)), parts["layout"], parts["kept"], arrays), SCHEMA)

        self._create_table(schema)
        self._append(rows(), f"migrated from {legacy.MANIFEST}", records)
        return len(records)

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self.records())


def collect(
    uris: list[str],
    out: str,
    token_size: int | None = None,
    mode: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    create_bucket: bool = False,
) -> tuple[list[ModelRecord], int]:
    """The collect stage: read the models that ``uris`` name (files, directories, ``s3://`` URLs, ``timm:`` names,
    ``pretrained:`` entries), tokenize them and add them to the collection at ``out``.

    The token size and mode default to the collection's (230 and dense for a new one). Returns the records of the
    models that were new and how many models the sources named.
    """
    collection = Collection(out)
    existing = collection.config() or TokenizerConfig()
    config = TokenizerConfig(existing.token_size if token_size is None else token_size, mode or existing.mode)  # type: ignore[arg-type]
    if collection.config() is None:
        storage.ensure_bucket(out, create=create_bucket)  # before reading any model: a typo fails in seconds
    found = sources.find(uris)
    added = collection.add(
        (model.read() for model in found),
        config,
        tags,
        total=len(found),
        progress=progress,
        create_bucket=create_bucket,
    )
    return added, len(found)
