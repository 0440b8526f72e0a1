"""GeoSANE: learn one latent space from the weights of many remote-sensing models, and decode new weights from it.

One import gives the public API, in the order data flows through it; the packages read in that order too
(``collection`` -> ``autoencoder`` / ``train`` -> ``generation`` -> ``bench``, with ``zoo`` feeding collections, and
``datasets`` and ``tasks`` beneath them all), and an earlier stage never imports a later one::

    import geosane

    # collect: models (files, s3:// URLs, timm:NAME, pretrained:GROUP) -> tokens in a collection at any fsspec URL
    added, named = geosane.collect(["pretrained:presto", "timm:resnet18?in_chans=13"], "out/collection")
    collection = geosane.Collection("out/collection")          # records(), tokens(id), export(id), add(...)
    tokens = geosane.tokenize(state_dict, geosane.TokenizerConfig(token_size=230))
    state_dict = geosane.detokenize(tokens.tokens, tokens.layout, tokens.kept)   # bit for bit

    # real data, a Ray Tune model zoo trained on it, and the autoencoder trained with Ray Train + DeepSpeed
    eurosat = geosane.datasets.get("eurosat_rgb").load("test")
    geosane.run_zoo(geosane.ZooConfig.from_yaml("sweeps/zoo-small.yaml"), "out/collection", "out/runs")
    geosane.run_training(geosane.TrainConfig.from_yaml("sweeps/train-tiny.yaml", collection="out/collection"))

    # a trained autoencoder: whole models in and out of the latent space
    autoencoder = geosane.Autoencoder.load("out/runs/demo")
    latents = autoencoder.encode(geosane.tokenize(state_dict, autoencoder.tokenizer))
    rebuilt = geosane.detokenize(autoencoder.decode(latents), tokens.layout, tokens.kept)

    # generate: task-ready models for a prompt architecture, each with its model card
    (best,) = geosane.generate("out/runs/demo", "timm:resnet18?in_chans=13&num_classes=10", data="eurosat_ms")
    best.model, best.card

Names resolve on first use, so importing one part (as Ray Data's workers import ``geosane.views``) does not load
the rest. Every YAML config loads through :func:`load_config`; bad input raises :class:`GeoSANEError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane.lazy import exports
from geosane.version import __version__, software_versions

if TYPE_CHECKING:
    from geosane import datasets
    from geosane.autoencoder import Autoencoder, AutoencoderConfig, Latents
    from geosane.collection import Collection, ModelRecord, ModelSource, collect
    from geosane.config import load_config
    from geosane.errors import GeoSANEError
    from geosane.generation import AnchorCache, GenerateConfig, Generated, GeneratedCard, Generator, generate
    from geosane.scale import Scale
    from geosane.tokenizer import Layout, TokenizerConfig, Tokens, detokenize, tokenize
    from geosane.train import TrainConfig, run_training
    from geosane.zoo import ZooConfig, run_zoo

#: Public name -> the module that defines it (``datasets`` is the registry module itself).
EXPORTS = {
    "collect": "geosane.collection",
    "Collection": "geosane.collection",
    "ModelRecord": "geosane.collection",
    "ModelSource": "geosane.collection",
    "tokenize": "geosane.tokenizer",
    "detokenize": "geosane.tokenizer",
    "TokenizerConfig": "geosane.tokenizer",
    "Tokens": "geosane.tokenizer",
    "Layout": "geosane.tokenizer",
    "datasets": "geosane.datasets",
    "run_zoo": "geosane.zoo",
    "ZooConfig": "geosane.zoo",
    "run_training": "geosane.train",
    "TrainConfig": "geosane.train",
    "Autoencoder": "geosane.autoencoder",
    "AutoencoderConfig": "geosane.autoencoder",
    "Latents": "geosane.autoencoder",
    "Scale": "geosane.scale",
    "generate": "geosane.generation",
    "Generator": "geosane.generation",
    "AnchorCache": "geosane.generation",
    "GeneratedCard": "geosane.generation",
    "Generated": "geosane.generation",
    "GenerateConfig": "geosane.generation",
    "load_config": "geosane.config",
    "GeoSANEError": "geosane.errors",
}

__all__ = [*EXPORTS, "__version__", "software_versions"]


__getattr__, __dir__ = exports(__name__, EXPORTS)
