"""Records: problems named, every model's scale stored, and one id per model whatever its file format or order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from geosane.collection import Collection, collect, model_id
from geosane.collection.legacy import write_first_layout
from geosane.errors import GeoSANEError

from .helpers import source_of, timm_state


def test_records_name_problems(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="no collection here"):
        Collection(str(tmp_path)).records()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(GeoSANEError, match="manifest is not valid JSON"):
        Collection(str(tmp_path)).records()
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(GeoSANEError, match="manifest.json: not a GeoSANE collection manifest \\(a JSON list\\)"):
        Collection(str(tmp_path)).records()
    collection = Collection(str(tmp_path / "c"))
    collection.add([source_of(timm_state("test_resnet"), "r")], progress=False)
    with pytest.raises(GeoSANEError, match="no model 'nope'"):
        collection.record("nope")
    with pytest.raises(GeoSANEError, match="no version 99"):
        Collection(str(tmp_path / "c"), version=99).records()


def test_each_model_stores_its_scale_and_older_collections_still_have_one(tmp_path: Path) -> None:
    from geosane.scale import Scale

    collection = Collection(str(tmp_path / "c"))
    record = collection.add([source_of(timm_state("test_resnet"))], progress=False)[0]
    tokens = collection.tokens(record)
    expected = Scale.of(tokens.tokens, tokens.valid)
    assert (record.token_mean, record.token_std) == (float(expected.mean), float(expected.std))
    # a manifest written before scales were stored: the scale is computed from the model's tokens
    write_first_layout(str(tmp_path / "old"), {"m": timm_state("test_resnet")})
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    for row in manifest["models"]:
        del row["token_mean"], row["token_std"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = Collection(str(tmp_path / "old")).record(record.id)
    assert old.token_mean is None
    scale = Collection(str(tmp_path / "old")).scale(old)
    assert torch.equal(scale.mean, expected.mean) and torch.equal(scale.std, expected.std)


def test_one_model_has_one_id_whatever_its_file_format_or_order(tmp_path: Path) -> None:
    """A ``.pt``, a ``.safetensors`` and a shuffled-order ``.pt`` of the same weights are one model."""
    import random

    from safetensors.torch import save_file

    state = timm.create_model("test_resnet", num_classes=3).state_dict()
    shuffled = list(state.items())
    random.Random(0).shuffle(shuffled)
    torch.save(state, tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    torch.save(dict(shuffled), tmp_path / "shuffled.pt")
    files = [str(tmp_path / n) for n in ("model.pt", "model.safetensors", "shuffled.pt")]
    added, named = collect(files, str(tmp_path / "c"), token_size=64, progress=False)
    assert named == 3 and len(added) == 1
    assert added[0].id == model_id(dict(shuffled)) == model_id(state)
