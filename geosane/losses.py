"""GeoSANE's loss: ``gamma * NT-Xent(view1, view2) + (1 - gamma) * masked reconstruction error``.

Reconstructions and targets arrive standardized (``geosane.autoencoder.Scale``), so the reconstruction term is the
masked, normalized MSE of the method; it counts real values only, never a token's padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossConfig",
    "geosane_loss",
    "masked_mse",
    "nt_xent",
]


@dataclass(frozen=True)
class LossConfig:
    gamma: float = 0.05
    temperature: float = 0.1


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the values where ``mask`` is True."""
    return ((prediction - target) ** 2)[mask].mean()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalized-temperature cross entropy: each window's two views are positives, all others negatives."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(similarity, targets)


def geosane_loss(
    reconstructions: tuple[torch.Tensor, torch.Tensor],
    projections: tuple[torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor],
    masks: tuple[torch.Tensor, torch.Tensor],
    config: LossConfig = LossConfig(),
) -> dict[str, torch.Tensor]:
    """Each view reconstructs its clean window (all standardized); their projections attract each other."""
    reconstruction = (
        masked_mse(reconstructions[0], targets[0], masks[0]) + masked_mse(reconstructions[1], targets[1], masks[1])
    ) / 2
    contrastive = nt_xent(projections[0].float(), projections[1].float(), config.temperature)
    loss = config.gamma * contrastive + (1 - config.gamma) * reconstruction
    return {"loss": loss, "reconstruction": reconstruction.detach(), "contrastive": contrastive.detach()}
