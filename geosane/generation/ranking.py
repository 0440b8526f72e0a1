"""Making candidates task-ready and choosing among them: BatchNorm statistics re-estimated on unlabeled target
images, and a score on the target's *selection* split (never its test split)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geosane.errors import GeoSANEError
from geosane.generation.config import GenerateConfig
from geosane.generation.prompt import Prompt

__all__ = ["RANKINGS", "TargetData", "load_target", "reestimate_batchnorm", "selection_score"]

BATCHNORM_IMAGES = 512  # unlabeled target images that re-estimate BatchNorm statistics


SELECTION_IMAGES = 1000  # selection-split images that rank the candidates


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, images: torch.Tensor | list[torch.Tensor], batch: int = 64, seed: int = 0
) -> int:
    """BatchNorm running statistics from forward passes in *train* mode over unlabeled images (cumulative averages,
    no gradients, no parameter changes); returns the number of BatchNorm layers re-estimated.

    The images go in a seeded random order: datasets list samples class by class, and batches of one class would
    average within-class variances, far smaller than the data's (measured: EuroSAT models lost 5 points of accuracy).

    Args:
        model: the model (its BatchNorm statistics change, nothing else).
        images: unlabeled images (a list for detection).
        batch: images per forward pass.
        seed: seeds the images' order.

    Returns:
        The number of BatchNorm layers re-estimated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    if isinstance(images, list):  # images of different sizes (detection), one at a time
        for index in order.tolist():
            model(images[index][None])
    else:
        shuffled = images[order]
        for first in range(0, len(shuffled), batch):
            model(shuffled[first : first + batch])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(norms)


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


def load_target(config: GenerateConfig, prompt: Prompt) -> TargetData | None:
    """The target data of a generation: unlabeled train images and the selection split.

    Args:
        config: the generation's settings (``data``, ``task``).
        prompt: the built prompt, whose bands and classes must fit the data.

    Returns:
        The data, or None without ``data``.

    Raises:
        GeoSANEError: the data's bands, task or classes differ from the prompt's.
    """
    from geosane import datasets

    if not config.data:
        return None
    dataset = datasets.get(config.data, config.data_root)
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
        config.data_root,
    )


RANKINGS = {
    True: "selection-split accuracy of the decoded classifier",
    False: "selection-split accuracy of a nearest-class-mean classifier on the features (new head)",
    "segmentation": "selection-split mIoU of a per-pixel nearest-class-mean classifier on the backbone's features",
}


def nearest_class_mean(features: torch.Tensor, y: torch.Tensor, fit: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predictions for the samples outside ``fit`` by the nearest class mean of the samples in ``fit``: how well
    features separate the classes without training a head (a class absent from ``fit`` is never predicted)."""
    means = torch.stack([features[fit & (y == c)].mean(0) for c in range(num_classes)])
    distances = torch.cdist(features[~fit], means.nan_to_num())
    distances[:, torch.isnan(means).any(1)] = torch.inf
    return distances.argmin(1)


@torch.no_grad()
def selection_score(
    model: nn.Module, target: TargetData, head_kept: bool, task: str = "classification"
) -> tuple[float, torch.Tensor]:
    """How a candidate ranks (``RANKINGS``): a classifier's accuracy on the selection split when its classifier was
    decoded; with a new head, a nearest-class-mean classifier on its features (half the split fits, half scores);
    segmentation, whose heads are always new: the same per pixel on the backbone's levels, scored as mIoU.

    Args:
        model: a candidate task model.
        target: the target data.
        head_kept: whether its classifier was decoded.
        task: ``classification`` or ``segmentation``.

    Returns:
        The score, and the predictions it scored (to compare candidates' predictions with each other).
    """
    y = target.selection_y
    model.eval()
    if task == "segmentation":
        return segmentation_score(model, target)
    forward: Any = model  # a timm classifier
    batches = target.selection_x.split(128)
    if head_kept:
        predicted = torch.cat([forward(x).argmax(1) for x in batches])
        return float((predicted == y).float().mean()), predicted
    features = torch.cat([forward.forward_head(forward.forward_features(x), pre_logits=True) for x in batches])
    fit = torch.arange(len(y)) % 2 == 0
    predicted = nearest_class_mean(features, y, fit, target.num_classes)
    return float((predicted == y[~fit]).float().mean()), predicted


def segmentation_score(model: nn.Module, target: TargetData) -> tuple[float, torch.Tensor]:
    """Per-pixel nearest class mean on every backbone level upsampled to the finest: even chips fit, odd chips
    score (mIoU over the classes present)."""
    import torch.nn.functional as F
    from torchmetrics.functional.classification import multiclass_jaccard_index

    from geosane.tasks import backbone_features

    backbone: Any = model.backbone  # every segmentation model names its timm feature extractor so
    levels = backbone_features(backbone, target.selection_x)
    size = levels[0].shape[-2:]
    features = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in levels], 1)
    labels = F.interpolate(target.selection_y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    chips = torch.arange(len(labels)) % 2 == 0
    fit = chips[:, None, None].expand_as(labels).reshape(-1)
    pixels, y = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), labels.reshape(-1)
    predicted = nearest_class_mean(pixels, y, fit, target.num_classes)
    value = multiclass_jaccard_index(
        predicted, y[~fit], target.num_classes, average="none", ignore_index=255, zero_division=float("nan")
    )
    return float(value.nanmean()), predicted
