"""The foundation model: Galileo nano's released encoder (loaded strictly) under a seeded new head, on the task's
bands by name, with Galileo's own statistics only for Sentinel-2 digital numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from geosane.bench.foundation import GALILEO_ENCODER, galileo_classifier
from geosane.collection.pretrained import weights_dir
from geosane.errors import GeoSANEError


def data(bands: list[str], dn: bool) -> SimpleNamespace:
    """What galileo_classifier reads of a task's data."""
    statistics = ([1000.0] * len(bands), [500.0] * len(bands)) if dn else None
    return SimpleNamespace(bands=bands, num_classes=5, statistics=statistics, resolution_m=10.0, sentinel2_dn=dn)


def test_the_encoder_is_the_released_one_and_the_head_is_seeded(shared: Path) -> None:
    root = str(shared / "data")
    released = torch.load(weights_dir(root) / GALILEO_ENCODER, map_location="cpu", weights_only=True)
    rgb = galileo_classifier(data(["B04", "B03", "B02"], dn=False), seed=3, data_root=root)
    assert all(torch.equal(rgb.encoder.state_dict()[k], v) for k, v in released.items())
    assert not rgb.scale.ne(1).any()  # 8-bit images keep the task's standardization
    again = galileo_classifier(data(["B04", "B03", "B02"], dn=False), seed=3, data_root=root)
    head = [k for k in rgb.state_dict() if not k.startswith("encoder.")]
    assert head and all(torch.equal(rgb.state_dict()[k], again.state_dict()[k]) for k in head)
    s2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    multispectral = galileo_classifier(data(s2, dn=True), seed=3, data_root=root)
    assert multispectral.scale.ne(1).any()  # digital numbers: Galileo's own statistics
    with pytest.raises(GeoSANEError, match="encoder not found"):
        galileo_classifier(data(["B04", "B03", "B02"], dn=False), seed=3, data_root=str(shared / "nowhere" / "data"))
