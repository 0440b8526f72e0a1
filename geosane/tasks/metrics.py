"""How a task model is scored, by torchmetrics: top-1 accuracy, dataset-level mAP (multi-label), mean IoU over the
classes present (segmentation) and mAP@0.5 (detection). The zoo, the bench, generation's ranking and the
benchmarks all score with :func:`score`, so a recorded metric and a benchmark's agree."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from geosane.tasks.data import TaskData

__all__ = [
    "detection_target",
    "device_of",
    "is_weight",
    "metric_name",
    "parameters",
    "score",
    "score_samples",
    "to_device",
    "weight_distance",
]


def metric_name(task: str) -> str:
    """The task's metric: accuracy, map (multi-label), miou or map50."""
    from geosane.tasks.models import TASKS

    return TASKS[task]


def detection_target(target: Any) -> dict[str, torch.Tensor]:
    """A detection target as torchvision takes it: datasets give ``{"boxes", "labels"}``, or boxes of one class."""
    if isinstance(target, dict):
        return target
    return {"boxes": target, "labels": torch.ones(len(target), dtype=torch.int64)}


def score(model: nn.Module, data: TaskData, split: str, batch: int = 128) -> float:
    """The task's metric (:func:`metric_name`) of ``model`` on one split of ``data``.

    Args:
        model: a task model (:func:`geosane.tasks.create_model`).
        data: the task's splits.
        split: ``train``, ``selection`` or ``test``.
        batch: images per forward pass.

    Returns:
        Top-1 accuracy, dataset-level mAP (multi-label), mean IoU (classes present in prediction or target; 255
        ignored) or mAP@0.5 (detection).
    """
    x, y = getattr(data, split)
    return score_samples(model, data.task, x, y, data.num_classes, batch)


@torch.no_grad()
def score_samples(model: nn.Module, task: str, x: Any, y: Any, num_classes: int, batch: int = 128) -> float:
    """:func:`score` on samples in memory, by torchmetrics.

    Args:
        model: a task model.
        task: ``classification``, ``multilabel``, ``segmentation`` or ``detection``.
        x: images ``[N, C, H, W]`` (a list of ``[C, H, W]`` for detection).
        y: labels ``[N]``, ``[N, K]`` multi-label, masks ``[N, H, W]``, or boxes per image.
        num_classes: classes of the task.
        batch: images per forward pass.

    Returns:
        The task's metric.
    """
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex, MultilabelAveragePrecision

    device = device_of(model)
    model.eval()
    metric: Any
    if task == "detection":
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy")
        for image, boxes in zip(x, y, strict=True):
            (found,) = to_device(model([image.to(device)]), torch.device("cpu"))
            metric.update([found], [detection_target(boxes)])
        return float(metric.compute()["map_50"])
    if task == "multilabel":
        average_precision = MultilabelAveragePrecision(num_classes, average="macro")
        for first in range(0, len(x), batch):
            average_precision.update(
                model(x[first : first + batch].to(device)).sigmoid().cpu(), y[first : first + batch].long()
            )
        return float(average_precision.compute())
    if task == "classification":
        metric = MulticlassAccuracy(num_classes, average="micro")
    else:  # per class, NaN where a class is in neither prediction nor target; those are left out of the mean
        metric = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255, zero_division=math.nan)
    for first in range(0, len(x), batch):
        metric.update(model(x[first : first + batch].to(device)).argmax(1).cpu(), y[first : first + batch])
    value = metric.compute()
    return float(value.nanmean()) if task == "segmentation" else float(value)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters are."""
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def parameters(model: nn.Module) -> int:
    """Parameters of a model, all of them."""
    return sum(p.numel() for p in model.parameters())


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors, and the lists, tuples and dicts of them that detection uses, on ``device``.

    Args:
        value: a tensor, or lists, tuples and dicts of them.
        device: where to.

    Returns:
        The same structure, moved.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def is_weight(key: str, value: torch.Tensor, skip: tuple[str, ...] = ()) -> bool:
    """Whether a tensor counts in weight-space distances: floating point, not BatchNorm statistics (they are
    re-estimated), not under a ``skip`` prefix (a new head).

    Args:
        key: the tensor's name.
        value: the tensor.
        skip: key prefixes left out.

    Returns:
        Whether it counts.
    """
    return (
        value.is_floating_point()
        and not key.endswith(("running_mean", "running_var"))
        and not (skip and key.startswith(skip))
    )


def weight_distance(
    weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> float:
    """Normalized distance in weight space, ``||w - r|| / ||r||`` over the floating-point tensors both hold (not
    BatchNorm statistics, nor the ``skip`` prefixes: a new head): how far a model moved from where it started.

    Args:
        weights: a model's weights.
        reference: the weights it is compared with.
        skip: key prefixes left out.

    Returns:
        The distance (0 for identical weights).
    """
    difference = norm = 0.0
    for key, value in weights.items():
        other = reference.get(key)
        if other is None or other.shape != value.shape or not is_weight(key, value, skip):
            continue
        difference += float((value.double() - other.double()).pow(2).sum())
        norm += float(other.double().pow(2).sum())
    return (difference / norm) ** 0.5 if norm else float("nan")
