"""Ray Data pipeline from a collection's token shards to training batches.

``read_parquet`` streams the shards from ``file://`` or ``s3://`` (through the same fsspec filesystem the rest
of GeoSANE uses), each block's rows are put back in token order per model, cut into windows (random for training,
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


def block_windows(block: dict[str, np.ndarray], views: ViewConfig, train: bool, seed: int) -> dict[str, np.ndarray]:
    """``map_batches`` function over whole blocks: cut windows from each model's rows in the block.

    Shards are written in token order and a read block holds contiguous rows of its files, so windows are cut
    without an all-to-all group-by; only windows that would straddle two blocks of one large file are lost.
    """
    out: dict[str, list[np.ndarray]] = {}
    for path in np.unique(block["path"]):
        rows = block["path"] == path
        order = np.argsort(block["index"][rows])
        raw = block["tokens"][rows]
        tokens = (np.stack(raw) if raw.dtype == object else raw)[order]
        positions = np.stack([block[c][rows][order] for c in ("index", "layer", "within")], axis=1)
        valid = block["valid"][rows][order]
        # seeded by the run's seed, the rows and the pass: the same scheduling draws the same windows
        rng = np.random.default_rng([seed, int(positions[0, 0]), len(tokens), next(PASSES)])
        windows = cut_windows(tokens, positions, valid, window_starts(len(tokens), views, rng if train else None),
                              views.window)
        windows = make_views(windows, views, rng) if train else {**windows, "view1": windows["tokens"],
                                                                  "view2": windows["tokens"]}
        for key, value in windows.items():
            out.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in out.items()}


def window_dataset(collection_url: str, ids: list[str], views: ViewConfig, train: bool, seed: int = 0):
    """A Ray Dataset of windows of the models ``ids``: tokens, positions, valid, view1, view2."""
    import ray.data

    collection = Collection(collection_url)
    paths = shard_paths(collection, ids)
    dataset = ray.data.read_parquet(paths, filesystem=pyarrow_filesystem(collection_url), include_paths=True)
    return dataset.select_columns([*COLUMNS, "path"]).map_batches(
        block_windows, batch_size=None, batch_format="numpy", fn_kwargs={"views": views, "train": train, "seed": seed}
    )
