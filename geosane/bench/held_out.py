"""Held out means held out: a task flagged ``held_out`` is compared image by image with what every collection model
trained on, and one shared image makes the bench refuse to start, naming the model and the image."""

from __future__ import annotations

from typing import Any

from geosane.bench.config import BenchConfig, BenchTask
from geosane.errors import GeoSANEError

__all__ = ["check_held_out", "held_out_problems"]


def held_out_problems(records: list[Any], task: BenchTask, data_root: str | None) -> tuple[list[str], list[str]]:
    """Why ``task`` is not held out from the collection (one line per model that trained on one of its test images),
    and the models whose training data the collection does not record.

    Args:
        records: the collection's records.
        task: a task of the sweep.
        data_root: where the data lives.

    Returns:
        The problems, and the names of models that do not say what they trained on.
    """
    from geosane import datasets

    dataset = datasets.get(task.data, data_root)
    test = {k for i in dataset.splits()["test"] for k in dataset.image_keys(i)}
    problems, unknown, cache = [], [], {}  # type: ignore[var-annotated]
    for record in records:
        keys = datasets.training_keys(record.tags, data_root, cache)
        if keys is None:
            unknown.append(record.name)
            continue
        shared = sorted(keys & test)
        if shared:
            problems.append(
                f"{record.name} trained on {record.tags['dataset']}, which shares {len(shared)} image(s) with the "
                f"test split of {task.data} (e.g. {shared[0]})"
            )
    return problems, unknown


def check_held_out(config: BenchConfig, collection: dict[str, Any]) -> dict[str, Any]:
    """Refuse a task flagged held out that the collection saw (for a shipped autoencoder: its anchors and every model
    its card says it learned); what the collection does not record is returned.

    Args:
        config: the sweep.
        collection: the collection URL and version it reads (:func:`geosane.bench.runner.collection_of`).

    Returns:
        Per held-out task: how many models were checked and which do not record their training data.

    Raises:
        GeoSANEError: a model trained on a test image of a held-out task (named, with the image).
    """
    from geosane.autoencoder import registry
    from geosane.collection import Collection, ModelRecord

    report: dict[str, Any] = {}
    if not collection["collection"]:
        return report
    records = Collection(collection["collection"], collection["version"]).records()
    if registry.is_shipped(config.autoencoder):  # its anchors ship, not the collection it learned: the card lists it
        shipped = {r.tags.get("shipped_from", r.id) for r in records}  # anchors ship in half precision
        learned = registry.card(config.autoencoder).collection.models
        records += [r for r in map(ModelRecord.from_dict, learned) if r.id not in shipped]
    for task in config.tasks:
        if not task.held_out:
            continue
        problems, unknown = held_out_problems(records, task, config.data_root)
        if problems:
            raise GeoSANEError(
                f"task {task.name} is marked held_out, but {len(problems)} collection model(s) trained on its test "
                f"images: " + "; ".join(problems[:3])
            )
        report[task.name] = {"checked_models": len(records), "training_data_unrecorded": unknown}
    return report
