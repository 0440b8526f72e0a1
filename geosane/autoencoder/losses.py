"""GeoSANE's loss: ``gamma * NT-Xent(view1, view2) + (1 - gamma) * masked reconstruction error``.

Reconstructions and targets arrive standardized (``geosane.scale.Scale``), so the reconstruction term is the
masked, normalized MSE of the method; it counts real values only, never a token's padding.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from geosane.config import settings
from geosane.scale import Scale
from geosane.tokenizer import prefix_mask

__all__ = ["LossConfig", "geosane_loss", "masked_mse", "nt_xent", "training_losses"]


@settings(frozen=True)
class LossConfig:
    """The loss's weights: ``gamma`` of the contrastive term, at softmax ``temperature``."""

    gamma: float = 0.05
    temperature: float = 0.1


#: The loss weights of DESIGN.md.
DEFAULT_LOSS = LossConfig()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the values where ``mask`` is True.

    Args:
        prediction: predicted values.
        target: true values, of the same shape.
        mask: True where a value counts.

    Returns:
        A 0-d tensor.
    """
    return ((prediction - target) ** 2)[mask].mean()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalized-temperature cross entropy: each window's two views are positives, all others negatives.

    Args:
        a: projections of the first views ``[B, P]``.
        b: projections of the second views ``[B, P]``.
        temperature: the softmax temperature.

    Returns:
        A 0-d tensor.
    """
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
    config: LossConfig = DEFAULT_LOSS,
) -> dict[str, torch.Tensor]:
    """Each view reconstructs its clean window (all standardized); their projections attract each other.

    Args:
        reconstructions: both views' reconstructions, standardized.
        projections: both views' projections.
        targets: each view's clean window, standardized.
        masks: the real values of each view.
        config: gamma and temperature.

    Returns:
        ``loss``, ``reconstruction`` and ``contrastive``, each a 0-d tensor.
    """
    reconstruction = (
        masked_mse(reconstructions[0], targets[0], masks[0]) + masked_mse(reconstructions[1], targets[1], masks[1])
    ) / 2
    contrastive = nt_xent(projections[0].float(), projections[1].float(), config.temperature)
    loss = config.gamma * contrastive + (1 - config.gamma) * reconstruction
    return {"loss": loss, "reconstruction": reconstruction.detach(), "contrastive": contrastive.detach()}


def training_losses(
    network: Callable[..., Any], batch: dict[str, torch.Tensor], loss: LossConfig, bf16: bool
) -> dict[str, torch.Tensor]:
    """GeoSANE's loss on a training batch: both views through ``network`` (an :class:`Autoencoder` or the DeepSpeed
    engine around one), each window standardized by its model's scale (``batch["mean"]``, ``batch["std"]``, as
    ``encode`` standardizes a whole model); each view's target is its clean window in the same units (view 2's is
    ``tokens2`` at ``positions2`` when the views are shifted windows, the same window otherwise).

    Args:
        network: an :class:`Autoencoder`, or the DeepSpeed engine around one.
        batch: windows and views as ``geosane.views.make_views`` cuts them, with ``mean`` and ``std`` per window.
        loss: gamma and temperature.
        bf16: run the network in bfloat16 (inside a bf16 engine).

    Returns:
        ``loss``, ``reconstruction`` and ``contrastive``.
    """
    scale = Scale(batch["mean"].view(-1, 1, 1), batch["std"].view(-1, 1, 1))
    dtype = torch.bfloat16 if bf16 else torch.float32
    size = batch["tokens"].shape[-1]
    targets, masks, outputs = [], [], []
    for view, suffix in (("view1", ""), ("view2", "2" if "tokens2" in batch else "")):
        mask = prefix_mask(batch["valid" + suffix], size)
        outputs.append(network((scale.apply(batch[view]) * mask).to(dtype), batch["positions" + suffix]))
        targets.append(scale.apply(batch["tokens" + suffix]))
        masks.append(mask)
    reconstructions = (outputs[0][1].float(), outputs[1][1].float())
    projections = (outputs[0][2], outputs[1][2])
    return geosane_loss(reconstructions, projections, (targets[0], targets[1]), (masks[0], masks[1]), loss)
