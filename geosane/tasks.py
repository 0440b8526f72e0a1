"""Task models and metrics: a timm backbone with a classification or segmentation head.

Classification is timm's own model with ``num_classes``; segmentation puts a light FPN-style head on timm's
``features_only`` backbone (every level projected, upsampled to the finest one and summed, then upsampled to
the input). Both take any band count through ``in_chans``.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from geosane.errors import GeoSANEError

__all__ = [
    "TASKS",
    "SegmentationModel",
    "create_model",
    "evaluate",
    "loss_fn",
    "mean_iou",
]

TASKS = ("classification", "segmentation")


class SegmentationModel(nn.Module):
    """timm feature pyramid + per-level 1x1 projections + a 3x3 classifier, upsampled to the input size."""

    def __init__(self, arch: str, in_chans: int, num_classes: int, width: int = 32, **kwargs) -> None:
        super().__init__()
        self.backbone = timm.create_model(arch, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        feature_info: Any = self.backbone.feature_info  # timm's FeatureInfo on features_only models
        channels = feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        size = features[0].shape[-2:]
        fused = sum(
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.lateral, features, strict=True)
        )
        return F.interpolate(self.classifier(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


def create_model(
    arch: str, task: str, in_chans: int, num_classes: int, img_size: int | None = None, **kwargs
) -> nn.Module:
    """A timm architecture for ``task``; ``img_size`` is passed to architectures that need it (ViTs), and
    ``kwargs`` (e.g. ``patch_size``) to timm."""
    if not timm.is_model(arch):
        raise GeoSANEError(f"unknown timm architecture {arch!r}")
    if task == "classification":
        if img_size and "vit" in arch:
            kwargs["img_size"] = img_size
        return timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    if task == "segmentation":
        return SegmentationModel(arch, in_chans, num_classes, **kwargs)
    raise GeoSANEError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy for both tasks (per image or per pixel); label 255 marks nodata pixels and is ignored."""
    return F.cross_entropy(logits, target, ignore_index=255)


@torch.no_grad()
def evaluate(
    model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch: int = 256
) -> float:
    """Top-1 accuracy for classification, mean IoU over classes present for segmentation."""
    model.eval()
    predictions = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    if task == "classification":
        return float((predictions == y).float().mean())
    return mean_iou(predictions, y, num_classes)


def mean_iou(prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int = 255) -> float:
    """Mean intersection-over-union over classes that occur in the target or the prediction."""
    valid = target != ignore
    p, t = prediction[valid], target[valid]
    ious = []
    for c in range(num_classes):
        union = ((p == c) | (t == c)).sum()
        if union > 0:
            ious.append(float(((p == c) & (t == c)).sum()) / float(union))
    return sum(ious) / len(ious) if ious else 0.0
