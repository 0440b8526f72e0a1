"""Which samples a model trained on: the split helpers that the zoo (what a group trains on) and the bench's
held-out checks (what a collection model saw) share, so that both compute it one way.

A zoo group may *exclude* datasets: every train sample whose image is also a sample of an excluded dataset is left
out (EuroSAT RGB patches whose multispectral versions a benchmark holds out). Images are compared by
:meth:`Dataset.image_keys`.
"""

from __future__ import annotations

from geosane.datasets.registry import get

__all__ = ["excluded_keys", "training_ids", "training_keys"]


def excluded_keys(specs: list[str], data_root: str | None) -> set[str]:
    """The image keys of every sample of the datasets ``specs`` (all splits).

    Args:
        specs: datasets with options.
        data_root: where the data lives.

    Returns:
        The image keys.
    """
    keys: set[str] = set()
    for spec in specs:
        dataset = get(spec, data_root)
        keys |= {
            k
            for split in ("train", "selection", "test")
            for i in dataset.splits()[split]
            for k in dataset.image_keys(i)
        }
    return keys


def training_ids(spec: str, exclude: list[str], data_root: str | None, limit: int | None = None) -> list[str]:
    """The train-split samples a zoo group of ``spec`` trains on: the (limited) train split, less every sample
    whose image is one of the excluded datasets'.

    Args:
        spec: the group's dataset.
        exclude: datasets whose images it never trains on.
        data_root: where the data lives.
        limit: the group's ``train_limit``.

    Returns:
        The sample ids.
    """
    dataset = get(spec, data_root)
    ids = dataset.load_ids("train", limit)
    if not exclude:
        return ids
    keys = excluded_keys(exclude, data_root)
    return [i for i in ids if not keys.intersection(dataset.image_keys(i))]


def training_keys(tags: dict[str, str], data_root: str | None, cache: dict[str, set[str]]) -> set[str] | None:
    """The image keys a model trained on, from the tags the zoo records with it.

    Args:
        tags: a collection record's tags: ``dataset``, and ``train_limit`` and ``exclude`` where the group set them.
        data_root: where the data lives.
        cache: keys already computed, by dataset, limit and exclusions (shared across the records of a check).

    Returns:
        The image keys, or None when the tags do not say (a model collected from elsewhere).
    """
    spec = tags.get("dataset")
    if not spec:
        return None
    exclude = [e for e in tags.get("exclude", "").split(",") if e]
    limit = int(tags["train_limit"]) if tags.get("train_limit") else None
    key = f"{spec}|{limit}|{','.join(sorted(exclude))}"
    if key not in cache:
        dataset = get(spec, data_root)
        ids = training_ids(spec, exclude, data_root, limit)
        cache[key] = {k for i in ids for k in dataset.image_keys(i)}
    return cache[key]
