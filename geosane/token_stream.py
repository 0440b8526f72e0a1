"""The stream of token windows that trains the autoencoder: Ray Data from a collection's shards to batches.

``read_parquet`` streams the shards from ``file://`` or ``s3://`` (through the same fsspec filesystem the rest
of GeoSANE uses), each block's rows are put back in token order per model and cut into random windows with two
augmented views each (``geosane.views``). Ray Train hands each worker its shard of the windows. The split holds out
whole *lineages* for validation (every checkpoint of a zoo trial), never windows or sibling checkpoints of a trained
model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from geosane import storage
from geosane.collection import Collection, ModelRecord
from geosane.errors import GeoSANEError
from geosane.views import ViewConfig, block_windows, hidden_units, windows_per_pass

__all__ = ["ModelSplit", "lineage", "split_models", "window_dataset", "windows_per_model_for"]

COLUMNS = ["index", "layer", "within", "valid", "tokens"]


@dataclass(frozen=True)
class ModelSplit:
    """Which models of a collection train the autoencoder and which are held out to validate it, by id, and the
    lineages held out (every checkpoint of a held-out lineage is held out)."""

    train: list[str]
    val: list[str]
    val_lineages: list[str]


def lineage(record: ModelRecord) -> str:
    """The family tree a model belongs to: all checkpoints of one zoo trial (one seed of one architecture on one
    dataset) share one; any other model is its own. Holding out a checkpoint while training on its siblings would
    measure memory, not generalization."""
    tags = record.tags
    if "lineage" in tags:
        return tags["lineage"]
    if {"zoo", "dataset", "arch", "seed"} <= tags.keys():
        return f"{tags['zoo']}/{tags['dataset']}/{tags['arch']}/seed{tags['seed']}"
    return record.id


def split_models(records: list[ModelRecord], val_fraction: float, seed: int) -> ModelSplit:
    """Seeded split by *lineage*: about ``val_fraction`` of the lineages, with all their checkpoints, are held out;
    at least one lineage on each side when there are two or more."""
    lineages = sorted({lineage(r) for r in records})
    if len(lineages) < 2:
        raise GeoSANEError(
            f"need models of at least 2 lineages to hold some out for validation, the collection has {len(lineages)}"
        )
    order = sorted(lineages, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = min(len(lineages) - 1, max(1, round(val_fraction * len(lineages))))
    held_out = set(order[:n_val])
    return ModelSplit(
        train=sorted(r.id for r in records if lineage(r) not in held_out),
        val=sorted(r.id for r in records if lineage(r) in held_out),
        val_lineages=sorted(held_out),
    )


def pyarrow_filesystem(url: str) -> Any:
    """Our fsspec filesystem (S3 endpoint, timeouts) as a pyarrow filesystem for Ray Data."""
    import pyarrow.fs

    fs, _ = storage.filesystem(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def window_dataset(collection_url: str, ids: list[str], views: ViewConfig, seed: int = 0) -> Any:
    """A Ray Dataset of training windows of the models ``ids``: tokens, positions, valid, view1, view2, and the
    scale (mean, std) of each window's model.

    One pass draws ``views.windows_per_model`` random windows per window-length of every model; iterating the
    dataset again draws a fresh pass. With ``views.permute_hidden_units`` each pass permutes the hidden units of
    every model's permutable MLPs.
    """
    import ray.data

    collection = Collection(collection_url)
    records = {r.id: r for r in collection.records()}  # one manifest read, not one per model
    missing = [i for i in ids if i not in records]
    if missing:
        raise GeoSANEError(f"{collection.url}: models {missing[:3]} are not in the collection")
    paths = [storage.filesystem(storage.join(collection.url, records[i].shard))[1] for i in ids]
    shard = {i: records[i].shard.rsplit("/", 1)[-1] for i in ids}  # the file name a block's rows carry
    scales = {}
    for i in ids:  # stored at collect time (computed here only for models collected before that)
        scale = collection.scale(records[i])
        scales[shard[i]] = (float(scale.mean), float(scale.std))
    # The classic parquet reader reads footers once on the driver; the V2 reader starts 32 footer-reading actors
    # for every pass, which on a laptop costs more than the pass itself.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    # one block per shard (Ray would split small files to reach its default parallelism): a block holds a
    # whole model unless the model is larger than a block (128 MB)
    dataset = ray.data.read_parquet(
        paths, filesystem=pyarrow_filesystem(collection_url), include_paths=True, override_num_blocks=len(paths)
    )
    hidden = None
    if views.permute_hidden_units:  # each shard's permutable MLPs, from the layouts
        hidden = {shard[i]: (records[i].mode, hidden_units(collection.layout(records[i]))) for i in ids}
    return dataset.select_columns([*COLUMNS, "path"]).map_batches(
        block_windows,  # type: ignore[arg-type]  # Ray types the function without room for fn_kwargs
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={"views": views, "seed": seed, "scales": scales, "hidden": hidden},
    )


def windows_per_model_for(collection_url: str, ids: list[str], views: ViewConfig, min_windows: int) -> float:
    """The ``windows_per_model`` that makes one pass over the models ``ids`` at least ``min_windows`` long.

    Each pass restarts Ray Data's streaming execution (about half a second); small collections draw more windows
    per pass instead of restarting every few steps. Large collections keep one window per window-length.
    """
    records = {r.id: r for r in Collection(collection_url).records()}
    per_pass = sum(windows_per_pass(records[i].num_tokens, views) for i in ids) / views.windows_per_model
    return max(views.windows_per_model, min_windows / per_pass)
