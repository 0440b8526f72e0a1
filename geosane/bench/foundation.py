"""``foundation``: a real remote-sensing foundation model's encoder under a new linear head, fine-tuned with the same
budget as every other initialization: Galileo nano (nasaharvest/galileo, MIT; ``geosane.tasks.galileo``, which matches
the official implementation's outputs), fed the task's bands by name (EuroSAT RGB's three, or EuroSAT multispectral's
RGB, red edge, NIR and SWIR) at the data's real ground resolution. Where the data are Sentinel-2 digital numbers
(EuroSAT multispectral), each band is standardized with Galileo's own pre-training statistics
(``normalization.json``); 8-bit images (EuroSAT RGB) have no such scale and keep the task's standardization."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geosane.bench.context import TrialContext
from geosane.bench.initializations import INITIALIZATIONS
from geosane.errors import GeoSANEError

__all__ = ["GALILEO_ENCODER", "GALILEO_NORMALIZATION", "galileo_classifier"]

#: The released encoder and its pre-training statistics, in the shared weights folder.
GALILEO_ENCODER = "galileo_nano/encoder.pt"
GALILEO_NORMALIZATION = "galileo_nano/normalization.json"


def galileo_classifier(data: Any, seed: int, data_root: str | None = None, pretrained: bool = True) -> nn.Module:
    """Galileo nano's encoder (its released weights, loaded strictly) with a seeded new head, for ``data``'s bands,
    ground resolution and (for Sentinel-2 digital numbers) Galileo's own input statistics.

    Args:
        data: the task's :class:`~geosane.tasks.TaskData` (bands, classes, statistics, resolution).
        seed: seeds the head.
        data_root: the data root beside which the weights folder lies.
        pretrained: load the released encoder (False: its random initialization, for comparisons).

    Returns:
        The classifier.

    Raises:
        GeoSANEError: missing weights or statistics, or bands Galileo does not take.
    """
    from geosane.collection.pretrained import weights_dir
    from geosane.tasks.galileo import GalileoClassifier, load_normalization

    folder = weights_dir(data_root)
    normalization = None
    if getattr(data, "sentinel2_dn", False) and data.statistics:
        path = folder / GALILEO_NORMALIZATION
        if not path.exists():
            raise GeoSANEError(f"foundation: Galileo nano's normalization statistics not found at {path}")
        normalization = load_normalization(str(path))
    torch.manual_seed(seed)
    model = GalileoClassifier(
        data.bands,
        data.num_classes,
        resolution_m=getattr(data, "resolution_m", 10.0),
        normalization=normalization,
        task_statistics=data.statistics if normalization else None,
    )
    if pretrained:
        path = folder / GALILEO_ENCODER
        if not path.exists():
            raise GeoSANEError(f"foundation: Galileo nano's encoder not found at {path}")
        model.encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


@INITIALIZATIONS.register("foundation")
def foundation(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """Galileo nano's encoder with a new head, on the task's bands at its ground resolution."""
    model: Any = galileo_classifier(context.data, context.seed, context.config.data_root)
    groups = ", ".join(model.groups)
    scaled = "Galileo's statistics" if model.scale.ne(1).any() else "the task's standardization"
    return model, {
        "source": f"Galileo nano encoder (nasaharvest/galileo, MIT), band groups {groups}, "
        f"{model.resolution_m:g} m, inputs by {scaled}, new head"
    }
