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
per model, ``geosane.collection.legacy``) are read, and ``migrate`` copies one into the table format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, Iterable, Iterator

import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from geosane import storage
from geosane.collection import legacy
from geosane.collection import verify as checks
from geosane.collection.records import ModelRecord, check_finite, make_record, model_id, ordered_id
from geosane.collection.rows import (
    FORMAT,
    FORMAT_VERSION,
    ID_PATTERN,
    IDS_FOLLOW,
    ROWS_PER_FILE,
    SCHEMA,
    TABLE,
    decode_tokens,
    model_row,
    row_batch,
    table_schema,
    token_arrays,
)
from geosane.collection.sources import ModelSource
from geosane.errors import GeoSANEError
from geosane.scale import Scale
from geosane.tokenizer import Layout, TokenizerConfig, Tokens, detokenize, tokenize
from geosane.version import software_versions

__all__ = ["Collection"]

log = logging.getLogger(__name__)


class Collection:
    """Models as tokens at ``url``: read with ``records``/``tokens``/``export``, write with ``add``.

    ``version`` pins the collection as it was at that commit (``None``: the latest, re-read on every call, so
    other writers' models appear)."""

    def __init__(self, url: str, version: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.table_url = storage.join(self.url, TABLE)
        self.pinned = version
        self.readable: list[int] | None = None  # set by verify: read only these fragments (the others are damaged)
        self.damaged: list[str] = []  # the data files the last read had to leave out, each with its models
        self.latest_checked: int | None = None  # the latest version already checked against the version hint

    # ----------------------------------------------------------------------------------------- reading

    def dataset(self, check_latest: bool = True) -> Any:
        """The Lance dataset at the pinned version or the latest (:func:`.verify.open_table`, then
        :func:`.verify.check_latest`); None: no table."""
        with checks.named(self, "open"):
            if not storage.exists(storage.join(self.table_url, "_versions")):
                return None
            dataset = checks.open_table(self, self.pinned)
        if self.pinned is None and check_latest and dataset.version != self.latest_checked:
            checks.check_latest(self, dataset)  # once per version opened: every read opens the dataset
            self.latest_checked = dataset.version
        return dataset

    def _legacy(self) -> bool:
        return legacy.is_legacy(self.url)

    def _required(self) -> Any:
        dataset = self.dataset()
        if dataset is None and not self._legacy():
            raise GeoSANEError(f"{self.url}: no collection here ({TABLE} not found)")
        return dataset

    def exists(self) -> bool:
        """Whether a collection (table or first layout) is here."""
        if self.dataset() is not None:
            return True
        return self._legacy() and bool(legacy.read_manifest(self.url))

    def config(self) -> TokenizerConfig | None:
        """The collection's token language, or None where there is no collection."""
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
        """Every commit: its version, time and number of models (those still readable, when the newest is not)."""
        dataset = self.dataset(check_latest=False)
        if dataset is None:
            self._required()  # no collection here at all: say so
            return []
        with checks.named(self, "list versions of"):
            return [
                {
                    "version": v["version"],
                    "time": v["timestamp"].isoformat(timespec="seconds"),
                    "models": int(v["metadata"].get("total_rows", 0)),
                }
                for v in dataset.versions()
            ]

    def rows(self, dataset: Any, columns: list[str], where: str | None = None) -> pa.Table:
        """Rows in commit order, the first of each id only (two writers may commit the same model at once).

        Args:
            dataset: the Lance dataset (:meth:`dataset`).
            columns: columns to read besides ``id``.
            where: a Lance filter, e.g. ``id = '...'``.

        Returns:
            An Arrow table with ``_rowaddr``.

        Raises:
            GeoSANEError: a data file cannot be read (named, with its models).
        """
        fragments = None if self.readable is None else [dataset.get_fragment(i) for i in self.readable]

        def scan(chosen: list[Any] | None) -> pa.Table:
            with checks.native_output_captured():  # a Rust panic prints its backtrace itself: keep it off the terminal
                scanner = dataset.scanner(
                    columns=["id", *columns], filter=where, with_row_address=True, fragments=chosen
                )
                return scanner.to_table()

        try:
            table = scan(fragments)
        except Exception as exc:  # a damaged data file damages its own model: read the others
            table, self.damaged = checks.read_apart(self, dataset, scan, fragments, exc)
        table = table.sort_by("_rowaddr")
        ids = table.column("id").to_pylist()
        seen: set[str] = set()
        first = [i for i, model in enumerate(ids) if not (model in seen or seen.add(model))]  # type: ignore[func-returns-value]
        return table.take(first) if len(first) < len(ids) else table

    def records(self) -> list[ModelRecord]:
        """Every model's record, each checked against its hash."""
        dataset = self._required()
        if dataset is None:
            return [ModelRecord.from_dict(row) for row in legacy.read_manifest(self.url)["models"]]
        table = self.rows(dataset, ["record", "record_sha256"])
        records = []
        for model, text, digest, address in zip(
            *(table.column(c).to_pylist() for c in ("id", "record", "record_sha256", "_rowaddr")), strict=True
        ):
            if storage.sha256(text) != digest:
                raise GeoSANEError(checks.mismatch(self, dataset, model, "record", address))
            record = ModelRecord.from_dict(json.loads(text))
            if record.id != model:
                raise GeoSANEError(checks.mismatch(self, dataset, model, "id", address))
            records.append(record)
        return records

    def record(self, model: str) -> ModelRecord:
        """A model by id (or an id it had before a migration), unique id prefix, or unique name."""
        records = self.records()
        matches = [r for r in records if r.id == model] or [r for r in records if model in r.aliases]
        matches = matches or [r for r in records if r.id.startswith(model)]
        matches = matches or [r for r in records if r.name == model]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise GeoSANEError(f"{self.url}: no model {model!r} (see `geosane collection ls {self.url}`)")
        raise GeoSANEError(f"{self.url}: {model!r} is ambiguous: {', '.join(r.id for r in matches[:5])}")

    def files_of(self, record: ModelRecord) -> list[str]:
        """The data files that hold the model's row (for a collection in the first layout, its files)."""
        dataset = self._required()
        if dataset is None:
            return list(legacy.part_urls(self.url, record.id).values())
        rows = self.rows(dataset, [], where=f"id = '{record.id}'")
        return checks.data_files(self, dataset, rows.column("_rowaddr")[0].as_py()) if rows.num_rows else []

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
            if self.damaged:  # it may be in a damaged file: say which
                raise GeoSANEError(f"{self.url}: model {record.id} cannot be read; " + "; ".join(self.damaged))
            raise GeoSANEError(f"{self.url}: no model {record.id} in version {dataset.version}")
        address = table.column("_rowaddr")[0].as_py()
        with checks.named(self, "read", record.id, checks.data_files(self, dataset, address)):
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
                    raise GeoSANEError(checks.mismatch(self, dataset, record.id, part, address))
        return out

    def layout(self, record: ModelRecord) -> Layout:
        """A model's layout, checked against its hash."""
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
                    raise GeoSANEError(checks.mismatch(self, dataset, model, "layout", address))
                layouts[model] = Layout.from_dict(json.loads(text))
        return layouts

    def kept(self, record: ModelRecord) -> dict[str, torch.Tensor]:
        """A model's kept tensors, checked against their hash."""
        return self._kept(record, self._parts(record, ("kept",))["kept"])

    def _kept(self, record: ModelRecord, data: bytes) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors(data)
        except SafetensorError as exc:
            raise GeoSANEError(f"{self.url}: model {record.id}: corrupt kept tensors ({exc})") from exc

    def tokens(self, model: str | ModelRecord) -> Tokens:
        """A model's tokens (by record, id, id prefix or name), checked against their hash."""
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
        """The model's :class:`~geosane.scale.Scale`, as collected (or from its tokens, for older collections)."""
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
        if record.id not in (model_id(state_dict), ordered_id(state_dict)):  # ids of 0.1 followed the file's order
            files = legacy.part_urls(self.url, record.id).values() if self.dataset() is None else []
            where = f" (files {', '.join(files)})" if files else ""
            raise GeoSANEError(
                f"{self.url}: model {record.id} rebuilds to different weights than were collected{where}; "
                f"the collection is damaged: `geosane collection verify {self.url}` lists every bad model"
            )
        return state_dict

    def verify(self, progress: bool = True) -> list[str]:
        """Read and check every data file and every model (:func:`geosane.collection.verify.verify`): one line per
        bad data file or model, naming the models and the files; empty when all is well."""
        return checks.verify(self, progress)

    # ----------------------------------------------------------------------------------------- writing

    def create(self, config: TokenizerConfig, create_bucket: bool = False) -> TokenizerConfig:
        """Create the empty table with the token language ``config``, unless another writer already did; returns the
        collection's token language. Only one creator can win, so racing writers all end up adding to one table.

        Args:
            config: the token language of a new table.
            create_bucket: create the ``s3://`` bucket if it does not exist.

        Returns:
            The collection's token language (another writer's, if it won the race).
        """
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
        the winner has appended since)."""
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
                with checks.named(self, "create"):
                    raise exc

    def add(
        self,
        sources: Iterable[ModelSource],
        config: TokenizerConfig | None = None,
        tags: dict[str, str] | None = None,
        total: int | None = None,
        progress: bool = True,
        create_bucket: bool = False,
        allow_nonfinite: bool = False,
    ) -> list[ModelRecord]:
        """Tokenize and store models in one commit; returns the records of the models that were new.

        Rows are streamed into data files as the models are read; the commit that makes them visible comes last,
        so a failure anywhere leaves the collection as it was.

        Args:
            sources: the models, read lazily one at a time.
            config: the token language (default: the collection's, or 230 dense).
            tags: metadata for every model.
            total: how many sources there are, for the progress bar.
            progress: show a progress bar.
            create_bucket: create the ``s3://`` bucket if it does not exist.
            allow_nonfinite: keep a model with NaN or infinite weights (refused by default, naming the tensor).

        Returns:
            The records of the models that were new (one already there is skipped).

        Raises:
            GeoSANEError: a past version, the first layout, another token language, or a model that cannot be read.
        """
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
        stored = set() if dataset is None else {i for r in self.records() for i in (r.id, *r.aliases)}
        read_version = None if dataset is None else dataset.version
        added: list[ModelRecord] = []
        failure: list[BaseException] = []

        def rows() -> Iterator[pa.RecordBatch]:
            try:
                for source in tqdm(sources, total=total, desc="collect", unit="model", disable=not progress):
                    if not allow_nonfinite:
                        check_finite(source.state_dict, source.uri)
                    tokens = tokenize(source.state_dict, config)
                    record = make_record(source, tokens, config, tags or {})
                    if record.id in stored or ordered_id(source.state_dict) in stored:  # 0.1's ids too
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
        with checks.named(self, "write"):
            fragments = lance.fragment.write_fragments(
                pa.RecordBatchReader.from_batches(SCHEMA, rows),
                self.table_url,
                schema=SCHEMA,
                max_rows_per_file=ROWS_PER_FILE,
                storage_options=options,
            )
        if not added:
            return
        with checks.named(self, "commit"):
            lance.LanceDataset.commit(
                self.table_url,
                lance.LanceOperation.Append(fragments),
                read_version=self.dataset().version if read_version is None else read_version,
                storage_options=options,
                commit_message=f"geosane {software_versions()['geosane']}: {message} {len(added)} model(s){IDS_FOLLOW}"
                + " ".join(r.id for r in added),
            )

    def migrate(self, progress: bool = True) -> int:
        """Bring a collection up to date (:func:`.legacy.migrate` from the first layout, then
        :func:`.legacy.rewrite_ids` for ids in the file's tensor order, merging rows of one model); returns how many
        models it wrote: every model of the table for a copied first layout, else those whose id changed."""
        copied = legacy.migrate(self, progress) if self.dataset() is None else 0
        rewritten = legacy.rewrite_ids(self, progress)
        return len(self.records()) if copied else rewritten

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self.records())
