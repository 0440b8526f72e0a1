"""Candidates: weights in the prompt's shapes put into a fresh task model, either decoded from drawn latents straight
into the model's own tensors (a generated candidate) or copied from weights at hand (an anchor, a soup...).

Decoding is streamed (``geosane.streaming``): the latents are drawn as they are decoded and each decoded layer is
written into the task model's tensor, so one candidate holds one model's weights, not several copies.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from geosane.autoencoder import Autoencoder, Latents
from geosane.errors import GeoSANEError
from geosane.generation.prompt import Prompt
from geosane.generation.sampling import KernelDraw
from geosane.streaming import TokenReader, TokenWriter
from geosane.tasks import load_backbone

__all__ = ["Weights", "copy_into", "decoder", "into_model", "seed_of"]

#: Weights in the prompt's shapes, or a function that writes them into the tensors it is given (a classifier's own,
#: a new head left out) or, given None, returns new ones (decoding).
Weights = Mapping[str, torch.Tensor] | Callable[[dict[str, torch.Tensor] | None], dict[str, torch.Tensor]]


def seed_of(seed: int, index: int) -> int:
    """Candidate ``index``'s seed: it seeds the candidate's draw and its new head, so that a candidate is the same
    wherever it runs.

    Args:
        seed: the generation's seed.
        index: which candidate.

    Returns:
        The candidate's seed.
    """
    return seed * 1_000_003 + index


def decoder(
    autoencoder: Autoencoder, latents: Latents | KernelDraw, reader: TokenReader, what: str
) -> Callable[[dict[str, torch.Tensor] | None], dict[str, torch.Tensor]]:
    """A function that decodes ``latents`` into the tensors it is given (or, given None, into new ones), in the
    anchor's layout with its kept (untokenized) tensors.

    Args:
        autoencoder: the autoencoder.
        latents: drawn latents (a :class:`KernelDraw` is drawn as it is decoded).
        reader: the anchor's tokens (its layout and kept tensors).
        what: how to name the candidate in an error.

    Returns:
        The writing function.
    """

    def decode_into(targets: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        writer = TokenWriter(reader.layout, reader.kept, targets)
        try:  # a damaged autoencoder or anchor decodes to NaN: say so rather than write weights that compute it
            autoencoder.decode_rows(latents, writer.write)
        except GeoSANEError as exc:
            raise GeoSANEError(f"{what}: {exc}") from exc
        return writer.finish()

    return decode_into


def into_model(
    prompt: Prompt, task: str, num_classes: int, weights: Weights, seed: int, new_head: tuple[str, ...]
) -> nn.Module:
    """A fresh task model on the prompt (initialized with ``seed``, which makes a new head the candidate's own), with
    ``weights`` put in: straight into the classifier's tensors, or the backbone of a segmentation or detection model.

    Args:
        prompt: the built prompt.
        task: the task.
        num_classes: the task's classes.
        weights: the weights (:data:`Weights`).
        seed: seeds the model's initialization.
        new_head: the classifier's keys where it is new (left as initialized), else empty.

    Returns:
        The task model, in train mode (its BatchNorm statistics are still the weights').

    Raises:
        GeoSANEError: the weights lack a tensor of the prompt, or one has another shape.
    """
    torch.manual_seed(seed)
    model = prompt.task_model(task, num_classes)
    if task == "classification":  # the weights go straight into the model's tensors
        targets = {k: v for k, v in model.state_dict().items() if k not in new_head}
        written = weights(targets) if callable(weights) else copy_into(targets, weights)
        missing = sorted(set(targets) - set(written))
        if missing:
            raise GeoSANEError(f"the weights lack {len(missing)} tensor(s) of {prompt.arch}, e.g. {missing[:3]}")
    else:
        load_backbone(model.backbone, weights(None) if callable(weights) else weights)  # type: ignore[arg-type]
    return model


def copy_into(targets: dict[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``weights`` into the tensors of ``targets`` they name (shapes must match), and return those written.

    Args:
        targets: a model's tensors (from ``model.state_dict()``), written in place.
        weights: the weights to copy.

    Returns:
        The targets that were written.

    Raises:
        GeoSANEError: a tensor whose shape differs from the model's, named.
    """
    written = {}
    for key, target in targets.items():
        if key in weights:
            if weights[key].shape != target.shape:
                raise GeoSANEError(
                    f"{key!r}: the model has shape {tuple(target.shape)}, the weights {tuple(weights[key].shape)}"
                )
            written[key] = target.copy_(weights[key])
    return written
