"""GeoSANE's loss: ``gamma * NT-Xent(view1, view2) + (1 - gamma) * masked normalized reconstruction``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    gamma: float = 0.05
    temperature: float = 0.1


def batch_statistics(target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the real values of a batch."""
    real = target[mask]
    return real.mean(), real.std().clamp_min(1e-8)


def masked_normalized_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over real values only, after standardizing both sides with the batch's real target statistics.

    Weights of different models live on very different scales; standardizing keeps the loss about shape.
    """
    mean, std = batch_statistics(target, mask)
    error = ((prediction - mean) / std - (target - mean) / std) ** 2
    return error[mask].mean()


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
    target: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig = LossConfig(),
) -> dict[str, torch.Tensor]:
    """Both views reconstruct the clean window; their projections attract each other."""
    reconstruction = sum(masked_normalized_mse(r.float(), target.float(), mask) for r in reconstructions) / 2
    contrastive = nt_xent(projections[0].float(), projections[1].float(), config.temperature)
    loss = config.gamma * contrastive + (1 - config.gamma) * reconstruction
    return {"loss": loss, "reconstruction": reconstruction.detach(), "contrastive": contrastive.detach()}
