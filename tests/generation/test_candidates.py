"""Candidates: decoding streams straight into the task model's tensors and gives, to the bit, what the whole-model
path gives; weights at hand go in only where every tensor fits."""

from __future__ import annotations

import pytest
import torch

import geosane
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig, build_prompt, sample_latents
from geosane.generation.candidates import copy_into, into_model, seed_of
from geosane.tokenizer import detokenize, tokenize

from ..helpers import assert_bit_exact
from .conftest import make_generator


def test_generation_streams_the_weights_of_the_whole_model_path(autoencoder: str) -> None:
    """Encoding from the weights, drawing as decoding reads and decoding into the task model give, to the bit, what
    tokenize -> encode -> one draw -> decode -> detokenize -> load gives."""
    settings = {"candidates": 2, "top_k": 2, "seed": 4, "bandwidth": 0.3}
    generated = geosane.generate(autoencoder, "timm:test_vit?num_classes=10", **settings)
    generator = make_generator(autoencoder, "timm:test_vit?num_classes=10", **settings)
    tokens = tokenize(generator.anchors[0].state_dict, generator.autoencoder.tokenizer)
    latents = generator.autoencoder.encode(tokens)
    for candidate in generated:
        index = candidate.card.candidate
        random = torch.Generator().manual_seed(seed_of(4, index))
        torch.randint(1, (1,), generator=random)  # the candidate's anchor: there is one
        drawn, _ = sample_latents([latents], "joint", 0.3, random)
        weights = detokenize(generator.autoencoder.decode(drawn.latents()), tokens.layout, tokens.kept)
        model, _ = generator.make_ready(weights, index)
        assert_bit_exact(model.state_dict(), candidate.state_dict)


def test_weights_go_into_a_seeded_task_model_only_where_they_fit() -> None:
    prompt, own = build_prompt(GenerateConfig(prompt="timm:test_resnet?num_classes=10"))
    model = into_model(prompt, "classification", 10, own, seed=7, new_head=("fc.weight", "fc.bias"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in own.items() if not k.startswith("fc."))
    again = into_model(prompt, "classification", 10, own, seed=7, new_head=("fc.weight", "fc.bias"))
    assert torch.equal(model.fc.weight, again.fc.weight) and not torch.equal(model.fc.weight, own["fc.weight"])
    with pytest.raises(GeoSANEError, match="lack 1 tensor"):
        into_model(prompt, "classification", 10, {k: v for k, v in own.items() if k != "conv1.0.weight"}, 7, ())
    with pytest.raises(GeoSANEError, match=r"'fc.bias': the model has shape \(10,\), the weights \(3,\)"):
        copy_into(dict(model.state_dict()), {"fc.bias": torch.zeros(3)})
