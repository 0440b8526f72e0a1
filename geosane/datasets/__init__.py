"""Real remote-sensing datasets by name, each with seeded, stratified, written-down splits.

``get("eurosat_rgb").load("train")`` returns images and labels as tensors in memory, which is what model-zoo
training on a few CPU cores wants. Split files live in ``geosane/datasets/splits/`` and are part of the
project, so every result names exactly which samples it saw.
"""

from __future__ import annotations

from geosane.datasets.base import SPLITS, Dataset, Samples, data_root
from geosane.datasets.cloudmask import CloudMask
from geosane.datasets.eurosat import EuroSATMS, EuroSATMSFull, EuroSATRGB
from geosane.datasets.neon_trees import NeonTrees
from geosane.datasets.sen1floods11 import Sen1Floods11
from geosane.errors import GeoSANEError

REGISTRY: dict[str, type[Dataset]] = {
    cls.name: cls for cls in (EuroSATRGB, EuroSATMS, EuroSATMSFull, CloudMask, Sen1Floods11, NeonTrees)
}


def list_datasets() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, root: str | None = None, **options) -> Dataset:
    """A dataset by registry name; ``root`` defaults as ``data_root`` resolves it."""
    if name not in REGISTRY:
        raise GeoSANEError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return REGISTRY[name](data_root(root), **options)


__all__ = ["SPLITS", "Dataset", "Samples", "data_root", "get", "list_datasets", "REGISTRY"]
