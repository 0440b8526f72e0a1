"""Sampling in the latent space: kernel density around the anchors' latents, jointly (one anchor per candidate), per
token or per value."""

from __future__ import annotations

from dataclasses import replace

import torch

from geosane.autoencoder import Latents
from geosane.tokenizer import Scale

__all__ = ["sample_latents"]


def sample_latents(
    anchors: list[Latents], sampling: str, bandwidth: float, generator: torch.Generator
) -> tuple[Latents, int]:
    """One draw from the kernel density around the anchors' latents (see the module's docstring), and the anchor it
    is centred on (``joint``; the first anchor otherwise, whose layout and kept tensors it takes).

    Args:
        anchors: the anchors' latents (the same positions).
        sampling: ``joint``, ``token`` or ``individual``.
        bandwidth: the kernel's width in units of each latent dimension's spread.
        generator: the candidate's generator.

    Returns:
        The drawn latents and the anchor they are centred on.
    """
    stacked = torch.stack([a.values for a in anchors])  # [A, N, D]
    n_anchors, n, d = stacked.shape
    chosen = 0
    if sampling == "joint":
        chosen = int(torch.randint(n_anchors, (1,), generator=generator))
        center, scale = stacked[chosen], anchors[chosen].scale
    else:
        shape = (n, 1) if sampling == "token" else (n, d)
        pick = torch.randint(n_anchors, shape, generator=generator).expand(n, d)
        center = stacked.gather(0, pick.unsqueeze(0)).squeeze(0)
        scale = Scale(
            torch.stack([a.scale.mean for a in anchors]).mean(), torch.stack([a.scale.std for a in anchors]).mean()
        )
    spread = stacked.std(dim=1).mean(dim=0) if n > 1 else torch.ones(d)  # per latent dimension
    noise = torch.randn(n, d, generator=generator) * spread * bandwidth
    return replace(anchors[0], values=center + noise, scale=scale), chosen
