"""Specialists: real pretrained remote-sensing models for one dataset each, built by name (the ceiling a generated
model is read against, not a rival: they may have seen the task's scenes upstream)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from geosane.bench.config import SPECIALISTS
from geosane.bench.context import TrialContext
from geosane.errors import GeoSANEError

__all__ = ["Renormalize", "ukis_csmask"]


class Renormalize(nn.Module):
    """Inputs normalized with the task's statistics, re-normalized as a pretrained model expects them."""

    def __init__(self, ours: tuple[list[float], list[float]], theirs: tuple[list[float], list[float]]) -> None:
        super().__init__()
        view = (1, -1, 1, 1)
        scale = torch.tensor(ours[1]) / torch.tensor(theirs[1])
        shift = (torch.tensor(ours[0]) - torch.tensor(theirs[0])) / torch.tensor(theirs[1])
        self.register_buffer("scale", scale.view(view))
        self.register_buffer("shift", shift.view(view))

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the pretrained model's units."""
        return x * self.scale + self.shift


def ukis_csmask(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """ukis-csmask 1.0.0 ``model_6b_l1c``: a U-Net with an EfficientNet-B4 encoder trained upstream for cloud and
    shadow masks on Sentinel-2 and Landsat, read from the registry wheel's ONNX initializers and run in PyTorch
    (segmentation_models_pytorch), with the model's own input normalization in front."""
    import fsspec
    import segmentation_models_pytorch as smp

    from geosane import datasets
    from geosane.collection import pretrained
    from geosane.collection.formats import read_onnx

    uri = "pretrained:ukis-csmask-1.0.0#ukis-csmask-1.0.0/model_6b_l1c"
    location = pretrained.location(uri)
    with fsspec.open(location, "rb") as f:
        weights = {k.removeprefix("model."): v.float() for k, v in read_onnx(f.read(), uri).items()}
    with fsspec.open(location.replace(".onnx", ".json"), "r") as f:
        statistics = json.load(f)["data"]["dataset_statistics"]["img"]
    torch.manual_seed(context.seed)
    unet = smp.Unet(encoder_name="efficientnet-b4", encoder_weights=None, in_channels=6, classes=3)
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if unexpected or any("_conv_head" not in k and "_bn1" not in k for k in missing):
        raise GeoSANEError(f"{uri}: weights do not fit the U-Net (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info = datasets.get(context.data.spec, context.config.data_root).splits()
    model = nn.Sequential(Renormalize((info["mean"], info["std"]), (statistics[0], statistics[1])), unet)
    return model, {"source": f"{uri} (upstream training data may include these scenes)"}


SPECIALISTS.add("cloudmask", ukis_csmask)
