"""The latent search: its decoder pass is decoding with gradients, and a few steps lower the loss that ranks
candidates, recorded on the card; without target data it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import geosane
from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.errors import GeoSANEError
from geosane.generation.search import decode_with_grad
from geosane.tokenizer import tokenize

from .conftest import make_generator


def test_decoding_with_gradients_is_decoding() -> None:
    """The latent search's decoder pass (all windows in one batch, autograd on) computes what ``decode`` does."""
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig.named("tiny", token_size=23, window=16, batch_tokens=64)).eval()
    torch.manual_seed(1)
    latents = autoencoder.encode(tokenize(timm.create_model("test_resnet").state_dict(), autoencoder.tokenizer))
    values = latents.values.clone().requires_grad_(True)
    decoded = decode_with_grad(autoencoder, latents, values)
    assert torch.allclose(decoded, autoencoder.decode(latents), atol=1e-5, rtol=1e-4)
    (gradient,) = torch.autograd.grad(decoded.square().sum(), [values])
    assert gradient.abs().sum() > 0 and all(p.grad is None for p in autoencoder.parameters())


def test_a_latent_search_follows_the_selection_loss(autoencoder: str, shared: Path) -> None:
    """A few steps lower the loss that ranks candidates and move the weights; the card records the labelled images
    and the time it spent; without target data it is refused."""
    prompt, root = "timm:test_resnet?num_classes=10", str(shared / "data")
    settings = {"anchors": "prompt", "data": "eurosat_rgb", "data_root": root, "seed": 2, "candidates": 1}
    (plain,) = geosane.generate(autoencoder, prompt, **settings)
    (searched,) = geosane.generate(autoencoder, prompt, search_steps=3, search_lr=0.02, **settings)
    search = searched.card.search
    selection = make_generator(autoencoder, prompt, data_root=root, data="eurosat_rgb").target.selection_x
    assert search is not None and search.steps == 3 and search.images == len(selection) and search.seconds > 0
    assert search.loss[1] < search.loss[0]
    assert any(not torch.equal(v, plain.state_dict[k]) for k, v in searched.state_dict.items())
    assert plain.card.search is None
    with pytest.raises(GeoSANEError, match="search_steps: needs target data"):
        geosane.generate(autoencoder, prompt, search_steps=2)
