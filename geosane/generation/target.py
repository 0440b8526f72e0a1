"""The target data of a generation: unlabeled train images that re-estimate BatchNorm statistics, and the labelled
*selection* split that ranks candidates (never the test split), checked against the prompt's bands and classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from geosane.errors import GeoSANEError
from geosane.generation.config import GenerateConfig
from geosane.generation.prompt import Prompt

__all__ = ["BATCHNORM_IMAGES", "SELECTION_IMAGES", "TargetData", "load_target"]

BATCHNORM_IMAGES = 512  # unlabeled target images that re-estimate BatchNorm statistics
SELECTION_IMAGES = 1000  # selection-split images that rank the candidates


@dataclass
class TargetData:
    """Unlabeled images for BatchNorm, and the labelled selection split that ranks candidates."""

    name: str
    unlabeled: torch.Tensor
    selection_x: torch.Tensor
    selection_y: Any
    num_classes: int
    bands: list[str]
    classes: list[str]
    root: str | None = None  # the data root, where anchors' datasets are looked up (their class names)


def load_target(config: GenerateConfig, prompt: Prompt, data_root: str | None = None) -> TargetData | None:
    """The target data of a generation: unlabeled train images and the selection split.

    Args:
        config: the generation's settings (``data``, ``task``).
        prompt: the built prompt, whose bands and classes must fit the data.
        data_root: where the data lies (default: ``$GEOSANE_DATA``, then ``../shared/data``).

    Returns:
        The data, or None without ``data``.

    Raises:
        GeoSANEError: the data's bands, task or classes differ from the prompt's.
    """
    from geosane import datasets

    if not config.data:
        return None
    dataset = datasets.get(config.data, data_root)
    if dataset.in_chans != prompt.in_chans:
        raise GeoSANEError(
            f"dataset {config.data} has {dataset.in_chans} bands, the prompt {prompt.arch} takes in_chans="
            f"{prompt.in_chans}: set in_chans={dataset.in_chans} in the prompt"
        )
    if config.task != dataset.task:
        raise GeoSANEError(f"dataset {config.data} is a {dataset.task} dataset, the task is {config.task}")
    if config.task == "classification" and prompt.num_classes != dataset.num_classes:
        raise GeoSANEError(
            f"dataset {config.data} has {dataset.num_classes} classes, the prompt {prompt.arch} num_classes="
            f"{prompt.num_classes}: set num_classes={dataset.num_classes} in the prompt"
        )
    unlabeled = dataset.load("train", limit=BATCHNORM_IMAGES)
    selection = dataset.load("selection", limit=SELECTION_IMAGES)
    return TargetData(
        config.data,
        unlabeled.x,
        selection.x,
        selection.y,
        dataset.num_classes,
        list(dataset.bands),
        list(dataset.classes),
        data_root,
    )
