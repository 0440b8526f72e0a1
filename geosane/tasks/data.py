"""A downstream task's data in memory: its splits and what a model needs to know about them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geosane.datasets.base import BandsAndClasses

__all__ = ["TaskData", "load_task"]


@dataclass
class TaskData(BandsAndClasses):
    """One task's splits in memory, with what a model needs to know about them."""

    spec: str
    task: str  # classification | segmentation | detection
    bands: list[str]
    classes: list[str]
    train: tuple[Any, Any]
    selection: tuple[Any, Any]
    test: tuple[Any, Any]
    statistics: tuple[list[float], list[float]] | None = None  # per-band mean and std the inputs were standardized by
    resolution_m: float = 10.0  # ground size of a pixel
    sentinel2_dn: bool = False  # the raw values are Sentinel-2 L1C digital numbers


def load_task(
    spec: str,
    data_root: str | None = None,
    train_limit: int | None = None,
    selection_limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """A task's three splits in memory.

    Args:
        spec: a registered dataset with options (``cloudmask?holdout=landsat5``), ``npz:PATH`` or ``imagefolder:DIR``.
        data_root: where the data lives (default: ``$GEOSANE_DATA``, then ``../shared/data``).
        train_limit: at most this many train samples (a seeded, written-down subset); None: all.
        selection_limit: the same for the selection split.
        test_limit: the same for the test split.

    Returns:
        The task's data.
    """
    from geosane import datasets

    dataset = datasets.get(spec, data_root)
    parts = {
        split: dataset.load(split, limit)
        for split, limit in (("train", train_limit), ("selection", selection_limit), ("test", test_limit))
    }
    return TaskData(
        spec=spec,
        task=dataset.task,
        bands=list(dataset.bands),
        classes=list(dataset.classes),
        **{split: (samples.x, samples.y) for split, samples in parts.items()},
        statistics=(dataset.splits()["mean"], dataset.splits()["std"]),
        resolution_m=dataset.resolution_m,
        sentinel2_dn=dataset.sentinel2_dn,
    )
