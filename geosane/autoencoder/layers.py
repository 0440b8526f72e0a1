"""The autoencoder's building blocks: sinusoidal embeddings of token positions, and pre-LayerNorm transformer
blocks."""

from __future__ import annotations

import math

import torch
from torch import nn

from geosane.autoencoder.config import AutoencoderConfig

__all__ = ["PositionEmbedding", "Transformer", "sinusoidal"]


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[..., dim]`` sin/cos embedding of integer positions (any size: global indices reach millions).

    Args:
        positions: integer positions of any shape.
        dim: embedding width.

    Returns:
        ``[..., dim]`` embeddings.
    """
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
        """``[..., 3]`` integer positions -> ``[..., dim]`` embeddings."""
        return sum(sinusoidal(positions[..., i], self.dim) for i in range(positions.shape[-1]))  # type: ignore[return-value]


class Transformer(nn.Module):
    """Pre-LayerNorm transformer blocks (non-causal attention, 4x GELU MLP) and a final LayerNorm.

    Each block is built on its own, not deep-copied as ``nn.TransformerEncoder`` does: copies start from equal
    weights, and under DeepSpeed's ``zero.Init`` a copy of a partitioned parameter is empty.
    """

    def __init__(self, config: AutoencoderConfig, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.heads,
                dim_feedforward=4 * config.d_model,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, W, d_model]`` -> ``[B, W, d_model]``."""
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden)
