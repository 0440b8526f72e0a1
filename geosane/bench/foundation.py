"""``foundation``: a real remote-sensing foundation model's encoder under a new linear head, fine-tuned with the same
budget as every other initialization: Galileo nano (nasaharvest/galileo, MIT; ``geosane.tasks.galileo``), fed the
task's Sentinel-2 bands by name (EuroSAT RGB's three, or EuroSAT multispectral's RGB, red edge, NIR and SWIR)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geosane.bench.context import TrialContext
from geosane.bench.initializations import initialization
from geosane.errors import GeoSANEError

__all__ = ["GALILEO_ENCODER", "galileo_classifier"]

#: The released encoder, in the shared weights folder.
GALILEO_ENCODER = "galileo_nano/encoder.pt"


def galileo_classifier(
    bands: list[str], num_classes: int, seed: int, data_root: str | None = None, pretrained: bool = True
) -> nn.Module:
    """Galileo nano's encoder (its released weights, loaded strictly) with a seeded new head.

    Args:
        bands: the task's band names.
        num_classes: its classes.
        seed: seeds the head.
        data_root: the data root beside which the weights folder lies.
        pretrained: load the released encoder (False: its random initialization, for comparisons).

    Returns:
        The classifier.

    Raises:
        GeoSANEError: missing weights, or bands Galileo does not take.
    """
    from geosane.collection.pretrained import weights_dir
    from geosane.tasks.galileo import GalileoClassifier

    torch.manual_seed(seed)
    model = GalileoClassifier(bands, num_classes)
    if pretrained:
        path = weights_dir(data_root) / GALILEO_ENCODER
        if not path.exists():
            raise GeoSANEError(f"foundation: Galileo nano's encoder not found at {path}")
        model.encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


@initialization("foundation")
def foundation(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """Galileo nano's encoder with a new head, on the task's Sentinel-2 bands."""
    model: Any = galileo_classifier(
        context.data.bands, context.data.num_classes, context.seed, context.config.data_root
    )
    groups = ", ".join(model.groups)
    return model, {"source": f"Galileo nano encoder (nasaharvest/galileo, MIT), band groups {groups}, new head"}
