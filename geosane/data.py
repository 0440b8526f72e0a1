"""Ray Data pipeline from a collection's token shards to training batches.

``read_parquet`` streams the shards from ``file://`` or ``s3://`` (through the same fsspec filesystem the rest
of GeoSANE uses), rows are grouped back into models, each model is cut into windows (random for training,
a fixed tiling for validation) and training windows get two augmented views. Ray Train hands each worker its
shard of the training windows. Validation holds out whole *models*, never windows of a trained model.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from geosane import storage
from geosane.collection import Collection
from geosane.errors import GeoSANEError
from geosane.views import ViewConfig, cut_windows, make_views, window_starts

COLUMNS = ["index", "layer", "within", "valid", "tokens"]


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]


def split_models(ids: list[str], val_fraction: float, seed: int) -> Split:
    """Seeded split of model ids; at least one model on each side when there are two or more."""
    if len(ids) < 2:
        raise GeoSANEError(f"need at least 2 models to hold some out for validation, the collection has {len(ids)}")
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    return Split(train=sorted(order[n_val:]), val=sorted(order[:n_val]))


def pyarrow_filesystem(url: str):
    """Our fsspec filesystem (S3 endpoint, timeouts) as a pyarrow filesystem for Ray Data."""
    import pyarrow.fs

    fs, _ = storage.filesystem(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def shard_paths(collection: Collection, ids: list[str]) -> list[str]:
    records = {r.id: r for r in collection.records()}
    missing = [i for i in ids if i not in records]
    if missing:
        raise GeoSANEError(f"{collection.url}: models {missing[:3]} are not in the collection")
    return [storage.filesystem(storage.join(collection.url, records[i].shard))[1] for i in ids]


PASSES = itertools.count()  # per worker process: a fresh draw of windows on every pass over the data


def model_windows(rows: dict[str, np.ndarray], views: ViewConfig, train: bool, seed: int) -> dict[str, np.ndarray]:
    """``map_groups`` function: all token rows of one model -> its windows (with two views when training)."""
    order = np.argsort(rows["index"])
    tokens = np.stack(rows["tokens"])[order] if rows["tokens"].dtype == object else rows["tokens"][order]
    positions = np.stack([rows[c][order] for c in ("index", "layer", "within")], axis=1)
    valid = rows["valid"][order]
    # seeded by the run's seed, the model's size and the pass: the same scheduling gives the same windows
    rng = np.random.default_rng([seed, len(tokens), int(tokens[:, 0].view(np.uint32).sum() % 2**31), next(PASSES)])
    starts = window_starts(len(tokens), views, rng if train else None)
    windows = cut_windows(tokens, positions, valid, starts, views.window)
    if train:
        return make_views(windows, views, rng)
    return {**windows, "view1": windows["tokens"], "view2": windows["tokens"]}


def window_dataset(collection_url: str, ids: list[str], views: ViewConfig, train: bool, seed: int = 0):
    """A Ray Dataset of windows of the models ``ids``: tokens, positions, valid, view1, view2."""
    import ray.data

    collection = Collection(collection_url)
    paths = shard_paths(collection, ids)
    dataset = ray.data.read_parquet(
        paths, filesystem=pyarrow_filesystem(collection_url), columns=COLUMNS, include_paths=True
    )
    # one partition per model (bounded): Ray Data's default of 200 shuffle partitions is for big tables
    return dataset.groupby("path", num_partitions=min(len(paths), 32)).map_groups(
        model_windows, batch_format="numpy", fn_kwargs={"views": views, "train": train, "seed": seed}
    )
