"""The weight autoencoder: a transformer over windows of weight tokens with one latent per token.

Tokens are projected to ``d_model`` and summed with sinusoidal embeddings of their three position
coordinates (global index, layer index, index within layer); a pre-LayerNorm transformer encoder maps them
to per-token latents; the decoder mirrors it (latents in, positions added again) and projects back to
``token_size``. A projection head over a window's flattened latents feeds the contrastive loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from geosane.errors import GeoSANEError


@dataclass(frozen=True)
class AutoencoderConfig:
    token_size: int = 230
    d_model: int = 64
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    heads: int = 4
    latent_dim: int = 16
    window: int = 32
    projection_dim: int = 32
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


#: Named sizes: ``tiny`` for CPU tests, ``base`` for a workstation, ``geosane`` as published (~0.9B parameters).
CONFIGS: dict[str, AutoencoderConfig] = {
    "tiny": AutoencoderConfig(),
    "base": AutoencoderConfig(d_model=512, encoder_blocks=8, decoder_blocks=8, heads=8, latent_dim=64, window=256),
    "geosane": AutoencoderConfig(
        d_model=1536, encoder_blocks=16, decoder_blocks=16, heads=16, latent_dim=128, window=512, projection_dim=128
    ),
}


def config_named(name: str, **overrides) -> AutoencoderConfig:
    if name not in CONFIGS:
        raise GeoSANEError(f"unknown autoencoder size {name!r}; expected one of {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[..., dim]`` sin/cos embedding of integer positions (any size: global indices reach millions)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * frequencies
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(embedding, (0, dim - 2 * half))


class PositionEmbedding(nn.Module):
    """Sum of the sinusoidal embeddings of the three position coordinates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return sum(sinusoidal(positions[..., i], self.dim) for i in range(positions.shape[-1]))


class Transformer(nn.Module):
    """Pre-LayerNorm transformer blocks (non-causal attention, 4x GELU MLP) and a final LayerNorm.

    Each block is built on its own, not deep-copied as ``nn.TransformerEncoder`` does: copies start from equal
    weights, and under DeepSpeed's ``zero.Init`` a copy of a partitioned parameter is empty.
    """

    def __init__(self, config: AutoencoderConfig, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model, config.heads, dim_feedforward=4 * config.d_model, dropout=config.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden)


class WeightAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.positions = PositionEmbedding(config.d_model)
        self.token_in = nn.Linear(config.token_size, config.d_model)
        self.encoder = Transformer(config, config.encoder_blocks)
        self.to_latent = nn.Linear(config.d_model, config.latent_dim)
        self.latent_in = nn.Linear(config.latent_dim, config.d_model)
        self.decoder = Transformer(config, config.decoder_blocks)
        self.token_out = nn.Linear(config.d_model, config.token_size)
        self.projection = nn.Sequential(
            nn.Linear(config.window * config.latent_dim, 4 * config.projection_dim),
            nn.GELU(),
            nn.Linear(4 * config.projection_dim, config.projection_dim),
        )

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[B, W, T]`` tokens and ``[B, W, 3]`` positions -> ``[B, W, latent_dim]``."""
        hidden = self.token_in(tokens) + self.positions(positions).to(tokens.dtype)
        return self.to_latent(self.encoder(hidden))

    def decode(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.latent_in(latents) + self.positions(positions).to(latents.dtype)
        return self.token_out(self.decoder(hidden))

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """One vector per window for the contrastive loss (windows must be ``config.window`` long)."""
        return self.projection(latents.flatten(1))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = self.encode(tokens, positions)
        return latents, self.decode(latents, positions), self.project(latents)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
