"""Latent search: a candidate's latents moved for a few steps along the gradient of the selection split's loss,
taken through the decoder.

A weight-space copy of an anchor can only be perturbed blindly; in the latent space every step moves all of a
model's weights along directions the autoencoder learned from the collection. The loss is the one that ranks
candidates (:func:`~geosane.generation.ranking.selection_score`), made differentiable: cross-entropy of the
classifier when it was decoded, else of a nearest-class-mean classifier on the features (class means from the even
half of the split, scored on the odd half). The search spends the selection split's labelled images and time, and the
card records both. Only classification prompts are searched, and the decoder's activations for the whole model
are kept for the backward pass: a search is for lightweight prompts.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from geosane.autoencoder import Autoencoder, Latents
from geosane.streaming import TokenReader
from geosane.tokenizer import block_tensors
from geosane.views import halo_windows

__all__ = ["Features", "decode_with_grad", "nearest_mean_loss", "search_latents"]

#: Temperature of the nearest-class-mean logits (negative squared distances over the features' mean square).
TEMPERATURE = 0.1


def decode_with_grad(autoencoder: Autoencoder, latents: Latents, values: torch.Tensor) -> torch.Tensor:
    """``values`` (latents at ``latents``' positions) decoded to ``[N, token_size]`` in the model's units, every halo
    window in one pass with autograd on (what :meth:`Autoencoder.decode` computes, in one batch).

    Args:
        autoencoder: the autoencoder.
        latents: where the values sit (positions) and the scale decoding restores.
        values: ``[N, latent_dim]`` latents that may require grad.

    Returns:
        The decoded tokens, differentiable with respect to ``values``.
    """
    config = autoencoder.config
    core, halo = config.core_tokens, config.halo_tokens
    n = len(values)
    starts, cores = halo_windows(n, core, halo)
    index = torch.from_numpy(starts)[:, None] + torch.arange(core + 2 * halo)
    inside = (index < n)[..., None]
    index = index.clamp(max=n - 1)
    positions = latents.rows(0, n)[1]
    out = autoencoder(values[index] * inside, positions[index] * inside, part="decoder")
    offsets = torch.arange(core)
    rows = torch.from_numpy(cores)[:, None] + offsets
    columns = torch.from_numpy(cores - starts)[:, None] + offsets
    window = torch.arange(len(starts))[:, None].expand_as(rows)
    keep = rows < n  # the cores tile the model: their rows in order are the model's
    return out[window[keep], columns[keep]] * latents.scale.std + latents.scale.mean


class Features(torch.nn.Module):
    """A timm classifier's pooled features (what the nearest-class-mean ranking reads), as a module's forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> ``[B, features]``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # type: ignore[operator]


def selection_loss(model: torch.nn.Module, weights: dict[str, torch.Tensor], generation: Any) -> torch.Tensor:
    """The differentiable form of the selection score (see the module's docstring), BatchNorm on batch statistics.

    Args:
        model: the task model whose structure the weights fill.
        weights: its tensors, decoded (differentiable).
        generation: the :class:`~geosane.generation.Generator` (its target data holds the selection split).

    Returns:
        The loss.
    """
    from torch.func import functional_call

    target = generation.target
    assert target is not None
    x, y = target.selection_x, target.selection_y
    if generation.head_kept:
        return F.cross_entropy(functional_call(model, weights, (x,)), y)
    features = functional_call(Features(model), {f"model.{k}": v for k, v in weights.items()}, (x,))
    return nearest_mean_loss(features, y, target.num_classes)


def nearest_mean_loss(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy of a nearest-class-mean classifier: class means from the even samples, scored on the odd ones
    by their negative squared distances (scaled by :data:`TEMPERATURE` and the mean distance).

    Args:
        features: ``[B, F]`` features.
        y: ``[B]`` labels.
        num_classes: classes.

    Returns:
        The loss, differentiable with respect to the features.
    """
    fit = torch.arange(len(y)) % 2 == 0
    one_hot = F.one_hot(y[fit], num_classes).float()  # [fit, C]
    counts = one_hot.sum(0)
    means = (one_hot.T @ features[fit]) / counts.clamp_min(1)[:, None]
    distances = torch.cdist(features[~fit], means).square()
    logits = -distances / (TEMPERATURE * distances.detach().mean().clamp_min(1e-8))
    logits = logits.masked_fill(counts == 0, float("-inf"))  # a class the fitting half lacks is never predicted
    return F.cross_entropy(logits, y[~fit])


def search_latents(
    generation: Any, latents: Latents, reader: TokenReader, index: int
) -> tuple[Latents, dict[str, Any]]:
    """``generation.config.search_steps`` Adam steps on the latents (each coordinate moves about ``search_lr`` times its
    dimension's spread per step) against :func:`selection_loss`.

    Args:
        generation: the :class:`~geosane.generation.Generator` (its target data holds the selection split).
        latents: the candidate's drawn latents.
        reader: the anchor's layout and kept tensors.
        index: the candidate (seeds the task model built for the loss).

    Returns:
        The moved latents, and what the card says of the search (steps, images, loss before and after, seconds).
    """
    config, autoencoder, layout = generation.config, generation.autoencoder, reader.layout
    started = time.perf_counter()
    torch.manual_seed(config.seed * 1_000_003 + index)
    model = generation.prompt.task_model(config.task, generation.num_classes).train()
    kept = {k: v.clone() for k, v in reader.kept.items()}  # BatchNorm in train mode writes its statistics
    spread = latents.values.std(dim=0) if len(latents.values) > 1 else torch.ones(latents.values.shape[1])
    delta = torch.zeros_like(latents.values, requires_grad=True)  # the move, in units of each dimension's spread
    optimizer = torch.optim.Adam([delta], lr=config.search_lr)
    losses: list[float] = []
    for step in range(config.search_steps + 1):
        decoded = decode_with_grad(autoencoder, latents, latents.values + delta * spread)
        weights = dict(kept)
        for layer in layout.layers:
            weights.update(block_tensors(decoded[layer.start : layer.start + layer.count], layer, layout.mode))
        loss = selection_loss(model, weights, generation)
        losses.append(float(loss.detach()))
        if step == config.search_steps:  # the last pass only measures where the search ended
            break
        (delta.grad,) = torch.autograd.grad(loss, [delta])  # the autoencoder's own weights get no gradient
        optimizer.step()
    values = (latents.values + delta * spread).detach()
    return replace(latents, values=values), {
        "steps": config.search_steps,
        "images": len(generation.target.selection_x),
        "loss": [losses[0], losses[-1]],
        "seconds": round(time.perf_counter() - started, 2),
    }
