"""The stream of token windows that trains the autoencoder: Ray Data from a collection's table to batches.

``read_lance`` streams the collection's rows (one whole model each) from ``file://`` or ``s3://``, at one
version of the collection, so models added while a run trains do not change what it reads; each model's tokens
are checked against their hash and cut into random windows with two augmented views each (``geosane.views``).
Ray Train hands each worker its shard of the windows. The split holds out whole *lineages* for validation (every
checkpoint of a zoo trial), never windows or sibling checkpoints of a trained model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from geosane import storage
from geosane.collection import Collection, ModelRecord, verify
from geosane.errors import GeoSANEError
from geosane.views import ViewConfig, WindowSource, hidden_units, model_windows, windows_per_pass

__all__ = ["ModelSplit", "lineage", "split_models", "window_dataset", "windows_per_model_for"]

COLUMNS = ["index", "layer", "within", "valid", "tokens"]


@dataclass(frozen=True)
class ModelSplit:
    """Which models of a collection train the autoencoder and which are held out to validate it, by id, and the
    lineages held out (every checkpoint of a held-out lineage is held out). ``held_out`` are the models that the
    run's ``holdout`` rules keep out of training *and* validation (whole architecture families, datasets...), so
    that what the autoencoder does for what it never saw is reported apart."""

    train: list[str]
    val: list[str]
    val_lineages: list[str]
    held_out: list[str] = field(default_factory=list)


#: What ``holdout`` rules may name: a record's own fields, or its tags (a zoo's ``arch`` and ``dataset``).
HOLDOUT_FIELDS = ("family", "task", "modality", "licence", "arch", "dataset")


def holdout_value(record: ModelRecord, key: str) -> str | None:
    """A model's value of a ``holdout`` field: its record's own field, else its tag."""
    return getattr(record, key) if key in ("family", "task", "modality", "licence") else record.tags.get(key)


def held_out_by(record: ModelRecord, holdout: dict[str, list[str]]) -> bool:
    """Whether a model falls under any ``holdout`` rule (``{family: [vision_transformer]}``)."""
    return any(holdout_value(record, key) in values for key, values in holdout.items())


def check_holdout(holdout: dict[str, list[str]], records: list[ModelRecord]) -> None:
    """Rules name known fields and values some model has; a typo would silently hold out nothing."""
    for key, values in holdout.items():
        if key not in HOLDOUT_FIELDS:
            raise GeoSANEError(f"holdout: unknown field {key!r}; expected one of {', '.join(HOLDOUT_FIELDS)}")
        for value in values:
            if not any(holdout_value(r, key) == value for r in records):
                present = sorted({str(holdout_value(r, key)) for r in records})
                raise GeoSANEError(f"holdout: no model has {key} {value!r}; the collection has {present[:12]}")


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


def split_models(
    records: list[ModelRecord], val_fraction: float, seed: int, holdout: dict[str, list[str]] | None = None
) -> ModelSplit:
    """Seeded split by *lineage*: about ``val_fraction`` of the lineages, with all their checkpoints, are held out;
    at least one lineage on each side when there are two or more. Models under a ``holdout`` rule are in neither.

    Args:
        records: the collection's records.
        val_fraction: the share of lineages held out.
        seed: seeds the split.
        holdout: rules of what neither trains nor validates (``{family: [convnext, vision_transformer]}``).

    Returns:
        Training and validation ids, the held-out lineages, and the models the rules hold out.
    """
    holdout = holdout or {}
    check_holdout(holdout, records)
    held_out = sorted(r.id for r in records if held_out_by(r, holdout))
    records = [r for r in records if not held_out_by(r, holdout)]
    lineages = sorted({lineage(r) for r in records})
    if len(lineages) < 2:
        raise GeoSANEError(
            f"need models of at least 2 lineages to hold some out for validation, the collection has {len(lineages)}"
        )
    order = sorted(lineages, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = min(len(lineages) - 1, max(1, round(val_fraction * len(lineages))))
    val_lineages = set(order[:n_val])
    return ModelSplit(
        train=sorted(r.id for r in records if lineage(r) not in val_lineages),
        val=sorted(r.id for r in records if lineage(r) in val_lineages),
        val_lineages=sorted(val_lineages),
        held_out=held_out,
    )


def window_dataset(
    collection_url: str, ids: list[str], views: ViewConfig, seed: int = 0, version: int | None = None
) -> Any:
    """A Ray Dataset of training windows of the models ``ids``: tokens, positions, valid, view1, view2, and the
    scale (mean, std) of each window's model, read with ``read_lance`` from the collection at ``version``.

    One pass draws ``views.windows_per_model`` random windows per window-length of every model; iterating the
    dataset again draws a fresh pass. With ``views.permute_hidden_units`` each pass permutes the hidden units of
    every model's permutable MLPs.

    Args:
        collection_url: the collection.
        ids: the models to cut windows from.
        views: window and augmentation settings.
        seed: seeds the windows and views.
        version: the collection version to read.

    Returns:
        A Ray Dataset of batches of windows.
    """
    import ray.data

    collection = Collection(collection_url, version)
    dataset = collection.dataset()
    if dataset is None:
        raise GeoSANEError(
            f"{collection.url}: training reads collections in the table format; convert this one with "
            f"`geosane collection migrate {collection.url}`"
        )
    records = {r.id: r for r in collection.records()}  # one read of the records, not one per model
    missing = [i for i in ids if i not in records]
    if missing:
        raise GeoSANEError(f"{collection.url}: models {missing[:3]} are not in the collection")
    wanted = set(ids)
    rows = collection.rows(dataset, [])  # where each model's (first) row is
    addresses = {
        m: a
        for m, a in zip(rows.column("id").to_pylist(), rows.column("_rowaddr").to_pylist(), strict=True)
        if m in wanted
    }
    layouts = collection.layouts([records[i] for i in ids]) if views.permute_hidden_units else {}
    models = {}
    for i in ids:
        scale = collection.scale(records[i])  # stored at collect time (computed here only for older models)
        models[i] = WindowSource(
            mean=float(scale.mean),
            std=float(scale.std),
            mode=records[i].mode,
            hidden=hidden_units(layouts[i]) if i in layouts else [],
            files=verify.data_files(collection, dataset, addresses[i]),
        )
    first_rows = ", ".join(str(addresses[i]) for i in sorted(wanted))  # the first copy of each model, no other
    dataset = ray.data.read_lance(
        collection.table_url,
        version=dataset.version,
        columns=["id", "tokens", "valid", "positions", "tokens_sha256"],
        scanner_options={"filter": f"_rowaddr IN ({first_rows})"},
        storage_options=storage.object_store_options(collection.table_url),
    )
    return dataset.map_batches(
        model_windows,  # type: ignore[arg-type]  # Ray types the function without room for fn_kwargs
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={"views": views, "seed": seed, "models": models},
    )


def windows_per_model_for(collection_url: str, ids: list[str], views: ViewConfig, min_windows: int) -> float:
    """The ``windows_per_model`` that makes one pass over the models ``ids`` at least ``min_windows`` long.

    Each pass restarts Ray Data's streaming execution (about half a second); small collections draw more windows
    per pass instead of restarting every few steps. Large collections keep one window per window-length.

    Args:
        collection_url: the collection.
        ids: the training models.
        views: window settings.
        min_windows: windows a pass should hold.

    Returns:
        The factor.
    """
    records = {r.id: r for r in Collection(collection_url).records()}
    per_pass = sum(windows_per_pass(records[i].num_tokens, views) for i in ids) / views.windows_per_model
    return max(views.windows_per_model, min_windows / per_pass)
