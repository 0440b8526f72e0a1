"""Reading collections in the first layout (GeoSANE 0.1): a JSON manifest beside one file per model and part.

    manifest.json                 one record per model
    shards/<id>.parquet           the model's tokens, one row per token
    layouts/<id>.json             how to turn the tokens back into the state dict
    kept/<id>.safetensors         tensors that are not tokenized

Read only: :class:`geosane.Collection` reads such a collection through this module, and
``geosane collection migrate URL`` copies it into the table format, where it can grow. Nothing here was hashed
when it was written, so the only check on what it reads is the model id itself (a hash of the whole state dict),
which every export compares against.

Also the other thing 0.1 did differently: ids hashed the tensors in the file's order. ``migrate`` rewrites them
(:func:`rewrite_ids`) into the canonical order, keeping the old ones as aliases.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from geosane import storage
from geosane.collection.records import ModelRecord, make_record, model_id
from geosane.collection.rows import IDS_FOLLOW, ROWS_PER_FILE, SCHEMA, TABLE, model_row, row_batch, table_schema
from geosane.collection.sources import ModelSource, content_sha256
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig, tokenize

__all__ = ["MANIFEST", "is_legacy", "migrate", "read_manifest", "read_parts", "rewrite_ids", "write_first_layout"]

log = logging.getLogger(__name__)

FORMAT = "geosane.collection"
MANIFEST = "manifest.json"


def is_legacy(url: str) -> bool:
    """Whether a collection in the first layout (a manifest) is at ``url``."""
    return storage.exists(storage.join(url, MANIFEST))


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest, checked to be one."""
    path = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeoSANEError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        what = (
            f"format {manifest.get('format')!r}" if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        )
        raise GeoSANEError(f"{path}: not a GeoSANE collection manifest ({what})")
    if manifest.get("version", 0) > 1 or not isinstance(manifest.get("models"), list):
        raise GeoSANEError(f"{path}: not a version-1 collection manifest with a list of models")
    for key in ("token_size", "mode"):
        if key not in manifest:
            raise GeoSANEError(f"{path}: manifest has no {key!r}")
    return manifest


def part_urls(url: str, model_id: str) -> dict[str, str]:
    """Where each part of model ``model_id`` lives."""
    return {
        "tokens": storage.join(url, "shards", f"{model_id}.parquet"),
        "layout": storage.join(url, "layouts", f"{model_id}.json"),
        "kept": storage.join(url, "kept", f"{model_id}.safetensors"),
    }


def read_parts(url: str, model_id: str) -> dict[str, Any]:
    """One model's parts as the table format stores them: ``layout`` (JSON text), ``kept`` (safetensors bytes) and
    the token arrays ``tokens`` (float32, flat), ``valid`` and ``positions`` (int32, flat).

    Args:
        url: the collection's root.
        model_id: the model.

    Returns:
        The parts.

    Raises:
        GeoSANEError: a shard that cannot be read.
    """
    urls = part_urls(url, model_id)
    with storage.errors_named(urls["tokens"], "read"):
        fs, path = storage.filesystem(urls["tokens"])
        with fs.open(path, "rb") as handle:
            try:
                table = pq.read_table(handle)
            except (pa.ArrowException, OSError) as exc:
                raise GeoSANEError(f"{urls['tokens']}: model {model_id}: not a readable token shard ({exc})") from exc
    positions = np.stack([table.column(c).to_numpy() for c in ("index", "layer", "within")], axis=1)
    return {
        "layout": storage.read_bytes(urls["layout"]).decode(),
        "kept": storage.read_bytes(urls["kept"]),
        "tokens": table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        "valid": table.column("valid").to_numpy().astype(np.int32),
        "positions": positions.astype(np.int32).reshape(-1),
    }


def migrate(collection: Any, progress: bool = True) -> int:
    """Copy a collection in the first layout into the table format, at the same URL, in one commit; each model
    is checked (its rebuilt weights against its id) before it is copied. The old files are left as they were.

    Args:
        collection: the :class:`~geosane.collection.Collection` at that URL.
        progress: show a progress bar.

    Returns:
        The number of models copied.

    Raises:
        GeoSANEError: already a table, no collection, or a model that does not read back (nothing is copied).
    """
    if collection.dataset() is not None:
        raise GeoSANEError(f"{collection.url}: already in the table format ({TABLE})")
    if not collection._legacy():
        raise GeoSANEError(f"{collection.url}: no collection here ({MANIFEST} not found)")
    manifest = read_manifest(collection.url)
    config = TokenizerConfig(manifest["token_size"], manifest["mode"])
    records = collection.records()
    bad = []
    for record in tqdm(records, desc="check", unit="model", disable=not progress):
        try:
            collection.export(record)
        except GeoSANEError as exc:
            bad.append(str(exc))
    if bad:
        raise GeoSANEError(
            f"{collection.url}: {len(bad)} model(s) do not read back; nothing migrated:\n  " + "\n  ".join(bad)
        )
    schema = table_schema(config)

    def rows() -> Iterator[pa.RecordBatch]:
        for record in records:
            parts = read_parts(collection.url, record.id)
            arrays = {k: parts[k] for k in ("tokens", "valid", "positions")}
            yield row_batch(model_row(json.dumps(asdict(record)), parts["layout"], parts["kept"], arrays), SCHEMA)

    collection._create_table(schema)
    collection._append(rows(), f"migrated from {MANIFEST}", records)
    return len(records)


def write_first_layout(
    root: str, state_dicts: dict[str, dict[str, torch.Tensor]], token_size: int = 230
) -> list[ModelRecord]:
    """Write a collection in the first layout, as GeoSANE 0.1 wrote it: what the migration tests and the
    table-format benchmark start from. Nothing else writes this layout.

    Args:
        root: a local folder.
        state_dicts: the models, by name.
        token_size: values per token.

    Returns:
        The records written to the manifest.
    """
    from safetensors.torch import save_file

    config, folder, records = TokenizerConfig(token_size=token_size), Path(root), []
    for sub in ("shards", "layouts", "kept"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, sd in state_dicts.items():
        source = ModelSource(name=name, uri=f"memory:{name}", sha256=content_sha256(sd), state_dict=sd)
        tokens = tokenize(sd, config)
        record = make_record(source, tokens, config, {})
        positions = tokens.positions.numpy().astype(np.int32)
        table = pa.table(
            {
                "index": positions[:, 0],
                "layer": positions[:, 1],
                "within": positions[:, 2],
                "valid": tokens.valid.numpy().astype(np.int32),
                "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.tokens.numpy().reshape(-1)), token_size),
            }
        )
        pq.write_table(table, folder / "shards" / f"{record.id}.parquet", compression="zstd")
        (folder / "layouts" / f"{record.id}.json").write_text(json.dumps(tokens.layout.to_dict()))
        save_file({k: v.contiguous() for k, v in tokens.kept.items()}, folder / "kept" / f"{record.id}.safetensors")
        records.append(record)
    manifest = {"format": FORMAT, "version": 1, "token_size": token_size, "mode": "dense", "models": []}
    manifest["models"] = [asdict(r) for r in records]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return records


def rewrite_ids(collection: Any, progress: bool = True) -> int:
    """Give every model of a table collection its canonical id (:func:`~geosane.collection.records.model_id`), in
    one commit that rewrites every row; a changed model keeps its old id among its ``aliases``, so lookups by the
    old id still work, and earlier versions still read as they were. Rows that turn out to hold one model (0.1 gave
    a ``.pt`` and a ``.safetensors`` of the same weights two ids) become one row, the first, with every old id of
    the others among its aliases.

    Args:
        collection: the :class:`~geosane.collection.Collection`.
        progress: show a progress bar.

    Returns:
        The number of models whose id changed, a merged model once (0: nothing to do, nothing committed).

    Raises:
        GeoSANEError: a model that does not read back (nothing is changed).
    """
    import lance

    dataset = collection._required()
    records = collection.records()
    canonical = {}  # old id -> canonical id
    for record in tqdm(records, desc="ids", unit="model", disable=not progress):
        canonical[record.id] = model_id(collection.export(record))  # the export checks the weights against the id
    changed = {canonical[old] for old in canonical if canonical[old] != old}
    if not changed:
        return 0
    aliases: dict[str, list[str]] = {}  # canonical id -> every id its rows had, in table order
    for record in records:
        known = aliases.setdefault(canonical[record.id], [])
        known += [a for a in (*record.aliases, record.id) if a != canonical[record.id] and a not in known]
    merged = len(records) - len(aliases)
    if merged:
        log.warning(
            "%s: %d row(s) held a model another row holds; merged, their ids kept as aliases", collection.url, merged
        )
    written: set[str] = set()

    def rows() -> Iterator[pa.RecordBatch]:
        for batch in dataset.to_batches(columns=SCHEMA.names, batch_size=1):
            row = batch.to_pylist()[0]
            record = json.loads(row["record"])
            new = canonical[record["id"]]
            if new in written:  # another row of a model already written: its ids live on as aliases
                continue
            written.add(new)
            if record["id"] != new or record.get("aliases", []) != aliases[new]:
                record["id"], record["aliases"] = new, aliases[new]
                row["id"], row["record"] = record["id"], json.dumps(record)
                row["record_sha256"] = storage.sha256(row["record"])
            yield pa.RecordBatch.from_pylist([row], schema=batch.schema)

    options = storage.object_store_options(collection.table_url)
    schema = dataset.schema
    fragments = lance.fragment.write_fragments(
        pa.RecordBatchReader.from_batches(dataset.schema, rows()),
        collection.table_url,
        schema=schema,
        max_rows_per_file=ROWS_PER_FILE,
        storage_options=options,
    )
    lance.LanceDataset.commit(
        collection.table_url,
        lance.LanceOperation.Overwrite(schema, fragments),
        read_version=dataset.version,
        storage_options=options,
        commit_message=f"ids rewritten in canonical order: {len(changed)} model(s){IDS_FOLLOW}"
        + " ".join(sorted(changed)),
    )
    return len(changed)
