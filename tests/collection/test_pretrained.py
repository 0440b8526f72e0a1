"""The real pretrained models: Presto, Galileo nano and the ukis-csmask U-Nets, with their metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.collection import Collection, pretrained, sources
from geosane.errors import GeoSANEError


def test_catalogue_expands_to_every_real_model(shared: Path) -> None:
    models = {f.uri: f.name for f in sources.find(["pretrained:all"])}
    # Presto, Galileo's 4 parts, MERLIN 2, DL-L8S2-UV 2, sen2LCZ 1, Dynamic World 2, the U-Nets 4 + 2
    assert len(models) == 1 + 4 + 2 + 2 + 1 + 2 + 4 + 2
    assert "galileo_nano/target_encoder" in models.values() and "ukis-csmask-0.2.1/model_4b" in models.values()


def test_metadata_reaches_the_manifest(tmp_path: Path, shared: Path) -> None:
    collection = Collection(str(tmp_path / "c"))
    uris = [f.uri for f in sources.find(["pretrained:presto", "pretrained:ukis-csmask-0.2.1"])]
    records = {r.name: r for r in collection.add((sources.load(u) for u in uris), progress=False)}
    presto = records["presto"]
    assert (presto.family, presto.task, presto.modality, presto.licence) == (
        "presto",
        "self-supervised",
        "multimodal",
        "MIT",
    )
    assert presto.source.endswith("presto/default_model.pt") and presto.tags["catalogue"] == "presto"
    four = records["ukis-csmask-0.2.1/model_4b"]
    assert four.in_chans == 4 and four.bands == ["Blue", "Green", "Red", "NIR"] and four.num_classes == 3
    assert four.source.startswith("zip://ukis_csmask/model_4b.onnx::") and four.licence == "Apache-2.0"


def test_unknown_group_and_missing_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="unknown pretrained group"):
        sources.find(["pretrained:prithvi"])
    monkeypatch.setenv("GEOSANE_WHEELS", str(tmp_path))
    with pytest.raises(GeoSANEError, match="ukis_csmask-1.0.0-py3-none-any.whl not found"):
        pretrained.expand("pretrained:ukis-csmask-1.0.0")
