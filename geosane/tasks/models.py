"""Task models and metrics: a timm backbone with a classification, segmentation or detection head.

Classification is timm's own model with ``num_classes``; segmentation puts a light FPN-style head on timm's
``features_only`` backbone (every level projected, upsampled to the finest one and summed, then upsampled to
the input); detection is torchvision's Faster R-CNN on a feature pyramid (torchvision's) over the same backbone.
All take any band count through ``in_chans``, and all name the backbone ``backbone``, so generated backbone
weights load into any of them the same way.
"""

from __future__ import annotations

import re
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from geosane.errors import GeoSANEError
from geosane.registry import Registry

__all__ = [
    "DetectionModel",
    "SegmentationModel",
    "TASKS",
    "backbone_features",
    "backbone_weights",
    "create_model",
    "load_backbone",
    "sized_for_input",
]

#: The tasks a task model is built for, each with the metric it is scored by (:func:`geosane.tasks.metric_name`).
TASKS: Registry[str] = Registry(
    "task", {"classification": "accuracy", "multilabel": "map", "segmentation": "miou", "detection": "map50"}
)


def backbone_features(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """A timm ``features_only`` backbone's levels, channels first (Swin's come channels last).

    Args:
        backbone: a timm ``features_only`` model.
        x: images ``[N, C, H, W]``.

    Returns:
        The levels, each ``[N, C_l, H_l, W_l]``.
    """
    features = backbone(x)
    if str(getattr(backbone, "output_fmt", "NCHW")).endswith("NHWC"):
        features = [f.permute(0, 3, 1, 2) for f in features]
    return features


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
        """Per-pixel logits at the input size."""
        features = backbone_features(self.backbone, x)
        size = features[0].shape[-2:]
        fused = sum(
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.lateral, features, strict=True)
        )
        return F.interpolate(self.classifier(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


class PyramidBackbone(nn.Module):
    """timm ``features_only`` levels (NCHW), each projected to ``out_channels`` by torchvision's feature pyramid:
    the ``backbone`` torchvision's detectors expect (an ``out_channels`` attribute, an ordered dict of maps)."""

    def __init__(self, arch: str, in_chans: int, out_channels: int = 64, **kwargs) -> None:
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.body = timm.create_model(arch, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        feature_info: Any = self.body.feature_info
        self.levels = len(feature_info.channels())
        self.fpn = FeaturePyramidNetwork(feature_info.channels(), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = backbone_features(self.body, x)
        return self.fpn({str(i): f for i, f in enumerate(features)})


class DetectionModel(nn.Module):
    """torchvision's Faster R-CNN on a timm backbone with a feature pyramid: one anchor size per level, RoI pooling
    over all levels. ``num_classes`` counts object classes; torchvision adds the background class. Inputs are lists
    of ``[C, H, W]`` images (any sizes); in train mode targets give ``boxes`` and ``labels`` and the losses return."""

    def __init__(self, arch: str, in_chans: int, num_classes: int, image_size: int | None = None, **kwargs) -> None:
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__()
        pyramid = PyramidBackbone(arch, in_chans, **kwargs)
        size = int(image_size or kwargs.get("img_size") or timm.get_pretrained_cfg(arch).input_size[-1])  # type: ignore[union-attr]
        names = [str(i) for i in range(pyramid.levels)]
        anchors = AnchorGenerator(
            sizes=tuple((16 * 2**i,) for i in range(pyramid.levels)), aspect_ratios=((0.5, 1.0, 2.0),) * pyramid.levels
        )
        self.detector = FasterRCNN(
            pyramid,
            num_classes=num_classes + 1,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
            image_mean=[0.0] * in_chans,  # inputs come normalized by the dataset's statistics
            image_std=[1.0] * in_chans,
            fixed_size=(size, size),  # every image resized to the backbone's input size (ViTs and Swins need it)
        )

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (what generated weights load into)."""
        return self.detector.backbone.body

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """torchvision's Faster R-CNN on the images.

        Args:
            images: ``[C, H, W]`` images of any sizes.
            targets: in train mode, ``boxes`` and ``labels`` per image.

        Returns:
            The losses in train mode, the detections per image in eval mode.
        """
        return self.detector(images, targets)


def create_model(
    arch: str, task: str, in_chans: int, num_classes: int, img_size: int | None = None, **kwargs
) -> nn.Module:
    """A timm architecture for ``task``; ``img_size`` is passed to architectures that need it (ViTs), and
    ``kwargs`` (e.g. ``patch_size``) to timm.

    Args:
        arch: a timm architecture.
        task: ``classification``, ``multilabel``, ``segmentation`` or ``detection``.
        in_chans: input bands.
        num_classes: classes (object classes for detection).
        img_size: input size, for architectures built for one (:func:`sized_for_input`).
        **kwargs: more timm arguments.

    Returns:
        The model, freshly initialized.

    Raises:
        GeoSANEError: an unknown architecture or task.
    """
    if not timm.is_model(arch):
        raise GeoSANEError(f"unknown timm architecture {arch!r}")
    if img_size and sized_for_input(arch, task):
        kwargs["img_size"] = img_size
    if task in ("classification", "multilabel"):  # one logit per class; multi-label reads them independently
        return timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    if task == "segmentation":
        return SegmentationModel(arch, in_chans, num_classes, **kwargs)
    if task == "detection":
        return DetectionModel(arch, in_chans, num_classes, **kwargs)
    raise GeoSANEError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def sized_for_input(arch: str, task: str) -> bool:
    """Whether an architecture is built for the data's input size. CoAtNet and MaxViT partition attention by the
    input size, for every task; ViT classifiers size their position embeddings (their ``features_only`` backbones
    resample them, and keep the default size, as generation's segmentation prompts do); Swin keeps its own 224-pixel
    window grid, as its prompts and anchors have it; detection resizes its inputs to the backbone's own size.

    Args:
        arch: a timm architecture.
        task: the task the model is built for.

    Returns:
        True where ``img_size`` is passed to timm.
    """
    if task == "detection":
        return False
    return "coatnet" in arch or "maxvit" in arch or ("vit" in arch and task in ("classification", "multilabel"))


def load_backbone(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a timm classifier's weights into a task model's backbone (timm ``features_only``), which names some
    modules differently (``model.`` in front for ViTs, ``layers_0`` for ``layers.0`` in Swin). Every backbone tensor
    must be found: a missing one is an error, not a silently random layer.

    Args:
        module: a task model's backbone.
        state_dict: a timm classifier's weights.

    Raises:
        GeoSANEError: a backbone tensor the weights lack.
    """
    own = module.state_dict()
    loaded, missing = {}, []
    for key in own:
        for candidate in (key, key.removeprefix("model."), re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", key)):
            if candidate in state_dict and state_dict[candidate].shape == own[key].shape:
                loaded[key] = state_dict[candidate]
                break
        else:
            missing.append(key)
    if missing:
        shapes = [f"{k} {tuple(own[k].shape)}" for k in missing[:3]]
        raise GeoSANEError(f"generated weights lack {len(missing)} backbone tensor(s) of these shapes: {shapes}")
    module.load_state_dict(loaded, strict=True)


def backbone_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A task model's backbone under the names of the timm classifier (a segmentation or detection model of the zoo
    keeps its timm ``features_only`` backbone as ``backbone.``; the inverse of :func:`load_backbone`'s renaming);
    a classifier's weights as they are. Its head is left behind: a prompt gets its own."""
    prefix = "backbone."
    if not any(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {
        re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", k[len(prefix) :].removeprefix("model.")): v
        for k, v in state_dict.items()
        if k.startswith(prefix)
    }
