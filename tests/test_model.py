from __future__ import annotations

import pytest
import torch

from geosane.errors import GeoSANEError
from geosane.model import CONFIGS, WeightAutoencoder, config_named, num_parameters, sinusoidal


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_shapes_per_named_size(name: str) -> None:
    config = config_named(name, window=8)
    model = WeightAutoencoder(config)
    tokens = torch.randn(3, 8, config.token_size)
    positions = torch.randint(0, 1000, (3, 8, 3))
    latents, reconstruction, projection = model(tokens, positions)
    assert latents.shape == (3, 8, config.latent_dim)
    assert reconstruction.shape == tokens.shape and projection.shape == (3, config.projection_dim)


def test_geosane_size_is_about_0_9b_parameters() -> None:
    config = CONFIGS["geosane"]
    d = config.d_model
    # each pre-LN block: attention 4 d^2 + MLP 8 d^2 (+ biases and norms); 32 blocks
    blocks = (config.encoder_blocks + config.decoder_blocks) * (12 * d * d)
    assert 0.85e9 < blocks < 0.95e9
    with torch.device("meta"):
        assert 0.85e9 < num_parameters(WeightAutoencoder(config)) < 1.0e9


def test_positions_matter_and_are_not_aliased() -> None:
    torch.manual_seed(0)
    model = WeightAutoencoder(config_named("tiny", window=4)).eval()
    tokens = torch.randn(1, 4, 230)
    a = model.encode(tokens, torch.tensor([[[0, 0, 0], [1, 0, 1], [2, 1, 0], [3, 1, 1]]]))
    b = model.encode(tokens, torch.tensor([[[0, 0, 0], [1, 0, 1], [2, 2, 0], [3, 2, 1]]]))
    assert not torch.allclose(a, b), "the layer coordinate must change the latents"
    embeddings = sinusoidal(torch.arange(5000), 64)
    assert torch.cdist(embeddings, embeddings).add(torch.eye(5000) * 10).min() > 1e-3


def test_unknown_size() -> None:
    with pytest.raises(GeoSANEError, match="unknown autoencoder size 'huge'"):
        config_named("huge")


def test_blocks_start_from_their_own_weights() -> None:
    # built one by one, not deep-copied: equal starting blocks would waste depth (and break under zero.Init)
    model = WeightAutoencoder(config_named("tiny"))
    first, second = model.encoder.layers[0], model.encoder.layers[1]
    assert not torch.equal(first.linear1.weight, second.linear1.weight)
    assert len(model.decoder.layers) == model.config.decoder_blocks
