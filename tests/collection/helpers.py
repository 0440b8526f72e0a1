"""Helpers of the collection tests: models in memory as sources, and a round trip through a collection."""

from __future__ import annotations

import torch

from geosane.collection import Collection, sources
from geosane.collection.sources import ModelSource
from geosane.tokenizer import TokenizerConfig


def source_of(state_dict: dict[str, torch.Tensor], name: str = "m") -> ModelSource:
    return ModelSource(
        name=name, uri=f"memory:{name}", sha256=sources.content_sha256(state_dict), state_dict=state_dict
    )


def timm_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


def collect_and_export(root: str, state_dict: dict[str, torch.Tensor], mode: str = "dense") -> dict[str, torch.Tensor]:
    collection = Collection(root)
    added = collection.add([source_of(state_dict)], TokenizerConfig(mode=mode), progress=False)
    record = added[0] if added else collection.record(sources.content_sha256(state_dict)[:16])
    return collection.export(record.id)
