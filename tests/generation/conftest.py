"""Shared fixtures of the generation tests: an untrained autoencoder on disk (generation's plumbing does not depend
on how well it was trained) and a small collection to draw query anchors from."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.collection import Collection, sources
from geosane.config import make
from geosane.generation import GenerateConfig, Generator
from geosane.tokenizer import TokenizerConfig

TOKEN_SIZE = 230


@pytest.fixture(scope="session")
def autoencoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained autoencoder on disk."""
    torch.manual_seed(0)
    url = str(tmp_path_factory.mktemp("autoencoder"))
    Autoencoder(AutoencoderConfig(token_size=TOKEN_SIZE, window=32), {"step": 0}).save(url)
    return url


@pytest.fixture(scope="session")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Two EuroSAT-tagged test_resnet lineages and a MobileNetV3 larger than the lightweight prompt."""
    collection = Collection(str(tmp_path_factory.mktemp("collection")))
    found = []
    for seed in (0, 1):
        source = sources.load(f"timm:test_resnet?num_classes=10&seed={seed}")
        source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet", "seed": str(seed)}
        found.append(source)
    found.append(sources.load("timm:mobilenetv3_large_100?num_classes=10"))
    collection.add(found, TokenizerConfig(token_size=TOKEN_SIZE), progress=False)
    return collection


def make_generator(
    url: str, prompt: str, collection: str | None = None, data_root: str | None = None, **settings: Any
) -> Generator:
    """A :class:`Generator` for ``prompt`` with ``settings``, its autoencoder loaded from ``url``."""
    return Generator(make(GenerateConfig, prompt=prompt, **settings), Autoencoder.load(url), collection, data_root)
