"""Real remote-sensing datasets by name, each with seeded, stratified, written-down splits.

``get("eurosat_rgb").load("train")`` returns images and labels as tensors in memory, which is what model-zoo
training on a few CPU cores wants. Split files live in ``geosane/datasets/splits/`` and are part of the
project, so every result names exactly which samples it saw.

Owns the registry (``registry``), one module per dataset, the written-down splits and what a model trained on
(``training``: the split helpers the zoo and the bench share). May import the shared pieces only.
"""

from geosane.datasets.base import SPLITS, Dataset, Samples, data_root
from geosane.datasets.registry import REGISTRY, accepted_options, get, list_datasets, parse_dataset
from geosane.datasets.training import excluded_keys, training_ids, training_keys

__all__ = [
    "REGISTRY",
    "SPLITS",
    "accepted_options",
    "Dataset",
    "Samples",
    "data_root",
    "excluded_keys",
    "get",
    "list_datasets",
    "parse_dataset",
    "training_ids",
    "training_keys",
]
