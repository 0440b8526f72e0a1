"""The dataset registry: names to dataset classes, and ``get`` with options (``cloudmask?holdout=landsat5``)."""

from __future__ import annotations

import inspect
from pathlib import Path

from geosane.datasets.base import Dataset, data_root
from geosane.datasets.cloudmask import CloudMask
from geosane.datasets.eurosat import EuroSATMS, EuroSATMSFull, EuroSATRGB
from geosane.datasets.neon_trees import NeonTrees
from geosane.datasets.sen1floods11 import Sen1Floods11
from geosane.datasets.torchgeo_sets import DIOR, RESISC45, BigEarthNet
from geosane.datasets.user import IMAGEFOLDER, NPZ, ImageFolderDataset, NpzDataset
from geosane.errors import GeoSANEError
from geosane.registry import Registry
from geosane.spec import parse_spec

__all__ = ["REGISTRY", "accepted_options", "get", "list_datasets", "parse_dataset"]

REGISTRY: Registry[type[Dataset]] = Registry(
    "dataset",
    {
        cls.name: cls
        for cls in (
            EuroSATRGB,
            EuroSATMS,
            EuroSATMSFull,
            CloudMask,
            Sen1Floods11,
            NeonTrees,
            RESISC45,
            BigEarthNet,
            DIOR,
        )
    },
)


def list_datasets() -> list[str]:
    """The registered names, sorted."""
    return sorted(REGISTRY)


def parse_dataset(spec: str) -> tuple[str, dict[str, str]]:
    """``cloudmask?holdout=landsat5`` -> ``("cloudmask", {"holdout": "landsat5"})``: a dataset and its options, as
    configs, the CLI and the collection's tags name them (:func:`geosane.spec.parse_spec`)."""
    parsed = parse_spec(spec)
    return parsed.name, parsed.options


def accepted_options(name: str) -> set[str]:
    """The options a registered dataset takes (its constructor's keywords, less the data root)."""
    return set(inspect.signature(REGISTRY[name].__init__).parameters) - {"self", "root"}


def get(spec: str, root: str | None = None, **options) -> Dataset:
    """A dataset by registry name with options (``cloudmask?holdout=landsat5``), or a user's ``npz:PATH`` or
    ``imagefolder:DIR``; ``root`` defaults as ``data_root`` resolves it.

    Args:
        spec: a registered name with options (``cloudmask?holdout=landsat5``), ``npz:PATH`` or ``imagefolder:DIR``.
        root: the data root (default: ``$GEOSANE_DATA``, then ``../shared/data``).
        **options: more options, as keywords.

    Returns:
        The dataset.

    Raises:
        GeoSANEError: an unknown name or option.
    """
    if spec.startswith(NPZ):
        return NpzDataset(Path("."), spec.removeprefix(NPZ))
    if spec.startswith(IMAGEFOLDER):
        return ImageFolderDataset(Path("."), spec.removeprefix(IMAGEFOLDER))
    name, parsed = parse_dataset(spec)
    if name not in REGISTRY:
        raise GeoSANEError(
            f"unknown dataset {name!r}; known: {', '.join(list_datasets())}, or npz:PATH, imagefolder:DIR"
        )
    unknown = sorted(set(parsed) - accepted_options(name))
    if unknown:  # checked here: a TypeError raised inside a constructor is not the user's option
        raise GeoSANEError(f"dataset {spec!r}: {name} takes no option(s) {', '.join(unknown)}")
    return REGISTRY[name](data_root(root), **parsed, **options)
