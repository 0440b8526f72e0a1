"""Standardization: the one rule by which a model's token values enter and leave the autoencoder, ``(x - mean) / std``
with the mean and standard deviation of the model's own real values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from geosane.tokenizer import ROWS_PER_PASS, prefix_mask

__all__ = ["Scale"]


@dataclass(frozen=True)
class Scale:
    """The standardization rule, in this one place: a model's token values pass through the network as
    ``(x - mean) / std``, with the mean and (unbiased) standard deviation of the model's real values. The collection
    stores each model's scale (computed here at collect time), training windows carry their model's, and encoding a
    model computes it; decoding restores the scale the encoder removed."""

    mean: torch.Tensor  # 0-dimensional for one model; one per window ([B, 1, 1]) in a training batch
    std: torch.Tensor

    @classmethod
    def of(cls, values: torch.Tensor, valid: torch.Tensor) -> Scale:
        """The scale of ``values`` ``[..., T]`` whose first ``valid`` entries per token are real (float64 sums).

        Args:
            values: ``[..., T]`` token values.
            valid: real values per token.

        Returns:
            The mean and the (unbiased) standard deviation of the real values.
        """
        rows, counts = values.reshape(-1, values.shape[-1]), valid.reshape(-1)
        return cls.of_rows(lambda first, last: (rows[first:last], counts[first:last]), len(rows))

    @classmethod
    def of_rows(cls, read: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], num_tokens: int) -> Scale:
        """The scale of a model read ``ROWS_PER_PASS`` tokens at a time (a model streamed from its state dict never
        has all its tokens at once); the same sums in the same order as :meth:`of`, so the same scale to the bit.

        Args:
            read: ``read(first, last)`` gives tokens ``first..last-1`` ``[k, T]`` and their real-value counts.
            num_tokens: the model's length.

        Returns:
            The mean and the (unbiased) standard deviation of the real values.
        """
        total = squares = torch.zeros((), dtype=torch.float64)
        real = 0
        for first in range(0, num_tokens, ROWS_PER_PASS):
            rows, counts = read(first, min(first + ROWS_PER_PASS, num_tokens))
            chunk = rows.to(torch.float64, copy=True).mul_(prefix_mask(counts, rows.shape[-1]))  # one float64 copy
            total = chunk.sum() if first == 0 else total + chunk.sum()  # on the rows' device
            squares = chunk.square_().sum() if first == 0 else squares + chunk.square_().sum()
            real += int(counts.sum())
        mean = total / max(real, 1)
        variance = (squares - real * mean.square()) / (real - 1) if real > 1 else torch.ones_like(mean)
        return cls(mean.float(), variance.clamp_min(0).sqrt().float().clamp_min(1e-8))

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Values in standardized units."""
        return (values - self.mean) / self.std

    def restore(self, values: torch.Tensor) -> torch.Tensor:
        """Standardized values back in the model's units."""
        return values * self.std + self.mean
