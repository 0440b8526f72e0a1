"""Making candidates task-ready and choosing among them: BatchNorm statistics re-estimated on unlabeled target
images, a score on the target's *selection* split (never its test split), the ranking, and how different the
candidates are (the last steps of a generation before its cards)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from geosane.generation.target import TargetData
from geosane.registry import Registry

__all__ = [
    "RANKINGS",
    "box_chips",
    "diversity",
    "make_ready",
    "pixel_score",
    "rank",
    "ranking_of",
    "reestimate_batchnorm",
    "selection_score",
]


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


#: How candidates are ranked, by kind of task model (:func:`ranking_of`): what a card's ``ranked_by`` says.
RANKINGS: Registry[str] = Registry(
    "ranking",
    {
        "decoded classifier": "selection-split accuracy of the decoded classifier",
        "new head": "selection-split accuracy of a nearest-class-mean classifier on the features (new head)",
        "segmentation": "selection-split mIoU of a per-pixel nearest-class-mean classifier on the backbone's features",
        "detection": "selection-split mIoU (background and object classes, boxes filled) of a per-pixel "
        "nearest-class-mean classifier on the backbone's features, over chips of its input size",
    },
)


def ranking_of(task: str, head_kept: bool) -> str:
    """The :data:`RANKINGS` entry that scores a task model: by its task, and for a classifier by its head.

    Args:
        task: the task.
        head_kept: whether a classifier's head was decoded.

    Returns:
        The ranking's name.
    """
    if task != "classification":
        return task
    return "decoded classifier" if head_kept else "new head"


def make_ready(model: nn.Module, target: TargetData | None, task: str, head_kept: bool) -> dict[str, Any]:
    """A task model with its weights in made ready as every initialization from existing weights is: BatchNorm
    statistics re-estimated on unlabeled target images (the backbone's, for a new task head learns its own in
    fine-tuning), then scored on the selection split. Without target data nothing changes.

    Args:
        model: the task model (its BatchNorm statistics change).
        target: the target data, or None.
        task: the task.
        head_kept: whether its classifier was decoded (how it is scored).

    Returns:
        What the card says: BatchNorm layers, selection score, and the predictions scored.
    """
    if target is None:
        return {}
    network: Any = model if task == "classification" else model.backbone
    layers = reestimate_batchnorm(network, target.unlabeled)
    score, predictions = selection_score(model, target, head_kept, task)
    return {"batchnorm_layers": layers, "selection_score": score, "predictions": predictions}


def rank(results: list[tuple[nn.Module, dict[str, Any]]]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Candidates best first by their selection score (ties: the earlier candidate); unscored ones keep their order."""
    return sorted(results, key=lambda r: -r[1].get("selection_score", 0.0))


def diversity(results: list[tuple[dict[str, Any], dict[str, Any]]], head: tuple[str, ...]) -> dict[str, Any]:
    """How different a generation's candidates are: each one's normalized distance to its anchor, the pairwise
    normalized distances between candidates, and how often two candidates' selection-split predictions disagree.

    Args:
        results: every candidate's weights and notes (``distance``, ``predictions``).
        head: key prefixes left out of distances (a new head).

    Returns:
        Means and ranges of the three, with how many candidates and pairs they come from.
    """
    from itertools import combinations

    from geosane.tasks import backbone_weights, weight_distance

    def summary(values: list[float]) -> dict[str, float] | None:
        values = [v for v in values if v == v]  # not NaN
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)} if values else None

    pairs = list(combinations(range(len(results)), 2))
    weights = [backbone_weights(w) for w, _ in results]
    predictions: list[Any] = [info.get("predictions") for _, info in results]
    return {
        "candidates": len(results),
        "distance_to_anchor": summary([info.get("distance", float("nan")) for _, info in results]),
        "pairwise_distance": summary([weight_distance(weights[i], weights[j], head) for i, j in pairs]),
        "prediction_disagreement": summary(
            [
                float(torch.ne(predictions[i], predictions[j]).float().mean())
                for i, j in pairs
                if predictions[i] is not None and predictions[j] is not None
            ]
        ),
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
    segmentation and detection, whose heads are always new: the same per pixel on the backbone's levels, scored as
    mIoU (detection: boxes filled as masks, on chips of the backbone's input size).

    Args:
        model: a candidate task model.
        target: the target data.
        head_kept: whether its classifier was decoded.
        task: ``classification``, ``segmentation`` or ``detection``.

    Returns:
        The score, and the predictions it scored (to compare candidates' predictions with each other).
    """
    y, images = target.selection_y, target.selection_x
    task_model: Any = model.eval()  # a task model (geosane.tasks.create_model)
    if task == "segmentation":
        return pixel_score(task_model.backbone, images, y, target.num_classes)
    if task == "detection":  # a new detector has no mAP before training: how well its features find the boxes
        x, masks = box_chips(cast(list, images), y, task_model.detector.transform.fixed_size[0])  # its input size
        return pixel_score(task_model.backbone, x, masks, target.num_classes + 1)
    forward: Any = model  # a timm classifier
    batches = target.selection_x.split(128)
    if head_kept:
        predicted = torch.cat([forward(x).argmax(1) for x in batches])
        return float((predicted == y).float().mean()), predicted
    features = torch.cat([forward.forward_head(forward.forward_features(x), pre_logits=True) for x in batches])
    fit = torch.arange(len(y)) % 2 == 0
    predicted = nearest_class_mean(features, y, fit, target.num_classes)
    return float((predicted == y[~fit]).float().mean()), predicted


def pixel_score(
    backbone: nn.Module, x: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[float, torch.Tensor]:
    """Per-pixel nearest class mean on every backbone level upsampled to the finest: even chips fit, odd chips
    score (a single chip: top half, bottom half), as mIoU over the classes present; label 255 is ignored.

    Args:
        backbone: a timm ``features_only`` backbone.
        x: chips ``[N, C, H, W]``.
        labels: their per-pixel classes ``[N, H, W]``.
        num_classes: classes, background included where there is one.

    Returns:
        The mIoU, and the predicted classes of the scored pixels.
    """
    import torch.nn.functional as F
    from torchmetrics.functional.classification import multiclass_jaccard_index

    from geosane.tasks import backbone_features

    levels = backbone_features(backbone, x)
    size = levels[0].shape[-2:]
    features = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in levels], 1)
    labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    if len(labels) > 1:
        fit = (torch.arange(len(labels)) % 2 == 0)[:, None, None].expand_as(labels).reshape(-1)
    else:  # one chip: its top half fits, its bottom half scores
        fit = (torch.arange(size[0]) < size[0] // 2)[None, :, None].expand_as(labels).reshape(-1)
    pixels, y = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), labels.reshape(-1)
    known = y != 255  # ignored pixels (padding) neither fit nor score
    predicted = nearest_class_mean(pixels[known], y[known], fit[known], num_classes)
    value = multiclass_jaccard_index(
        predicted, y[known][~fit[known]], num_classes, average="none", ignore_index=255, zero_division=float("nan")
    )
    return float(value.nanmean()), predicted


def box_chips(images: list[torch.Tensor], targets: list[Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Detection images cut into ``size``-pixel chips at their own resolution, with per-pixel masks: 0 outside the
    boxes, an object's class (1, 2, ...) inside its box, 255 where a chip runs past a small image (padding). Chips
    cover each image edge to edge and overlap where its side is not a multiple of ``size``.

    Args:
        images: ``[C, H, W]`` images of any sizes.
        targets: per image, ``[K, 4]`` boxes (one class) or ``{"boxes", "labels"}``.
        size: the chips' side.

    Returns:
        The chips ``[N, C, size, size]`` and their masks ``[N, size, size]``.
    """
    from geosane.tasks import detection_target

    chips, masks = [], []
    for image, target in zip(images, targets, strict=True):
        boxes = detection_target(target)
        height, width = image.shape[-2:]
        mask = torch.zeros(max(height, size), max(width, size), dtype=torch.long)
        mask[height:], mask[:, width:] = 255, 255
        for box, label in zip(boxes["boxes"].round().long().tolist(), boxes["labels"].tolist(), strict=True):
            mask[max(box[1], 0) : box[3], max(box[0], 0) : box[2]] = label
        padded = torch.zeros(image.shape[0], *mask.shape)
        padded[:, :height, :width] = image
        for top in corners(mask.shape[0], size):
            for left in corners(mask.shape[1], size):
                chips.append(padded[:, top : top + size, left : left + size])
                masks.append(mask[top : top + size, left : left + size])
    return torch.stack(chips), torch.stack(masks)


def corners(length: int, size: int) -> list[int]:
    """Where chips of ``size`` start along a side of ``length`` (at least ``size``): the fewest that cover it,
    spread evenly from edge to edge."""
    count = -(-length // size)
    return [round(i * (length - size) / max(count - 1, 1)) for i in range(count)]
