"""Model cards: the same typed fields on every path (no target data: ``selection`` and ``batchnorm`` are None),
written beside the weights they vouch for, and the JSON schemas in ``docs/`` are the models' own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import geosane
from geosane.autoencoder.registry import AutoencoderCard
from geosane.collection import Collection
from geosane.generation import GeneratedCard, write_generated

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_a_card_without_target_data_has_the_same_fields(
    autoencoder: str, collection: Collection, tmp_path: Path
) -> None:
    generated = geosane.generate(
        autoencoder,
        "timm:test_resnet?in_chans=13&num_classes=10",
        anchors="dataset=eurosat_rgb",
        collection=collection.url,
        candidates=3,
        top_k=2,
        seed=3,
    )
    assert [g.card.rank for g in generated] == [1, 2]
    card = generated[0].card
    assert {a.name for a in card.anchors} == {"test_resnet"} and len(card.anchors) == 2
    assert card.head == "re-initialized (seeded)" and card.selection is None and card.batchnorm is None
    assert card.collection is not None and (card.collection.url, card.collection.version) == (
        collection.url,
        collection.version,
    )
    assert card.seed == 3 and card.diversity.candidates == 3
    written = write_generated(generated, str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"model-{rank}{suffix}" for rank in (1, 2) for suffix in (".json", ".md", ".safetensors")
    ]
    assert torch.equal(load_file(written[0])["fc.weight"], generated[0].state_dict["fc.weight"])
    stored = GeneratedCard.model_validate_json((tmp_path / "out/model-1.json").read_text())
    assert stored.weights_sha256 and stored.model_copy(update={"weights_sha256": None}) == card
    markdown = (tmp_path / "out/model-1.md").read_text()
    assert "input convolution adapted" in markdown and "not ranked: no target data" in markdown


def test_a_ranked_card_says_how_it_was_ranked(autoencoder: str, shared: Path) -> None:
    (generated,) = geosane.generate(
        autoencoder, "timm:test_resnet?num_classes=10", data="eurosat_rgb", data_root=str(shared / "data")
    )
    card = generated.card
    assert card.selection is not None and card.batchnorm is not None
    assert card.selection.split == "eurosat_rgb selection" and 0 <= card.selection.score <= 1
    assert card.selection.ranked_by == geosane.generation.RANKINGS["new head"]
    assert card.batchnorm.images > 0 and card.batchnorm.layers > 0


@pytest.mark.parametrize(
    ("model", "file"),
    [(GeneratedCard, "generated-card.schema.json"), (AutoencoderCard, "autoencoder-card.schema.json")],
)
def test_the_documented_schema_is_the_cards_own(model: type, file: str) -> None:
    """``docs/*.schema.json`` is what ``python docs/write_schemas.py`` writes from the card models."""
    assert json.loads((DOCS / file).read_text()) == model.model_json_schema()
