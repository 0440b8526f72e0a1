"""Sampling in the latent space: kernel density around the anchors' latents, jointly (one anchor per candidate), per
token or per value.

A ``joint`` draw is one anchor's latents plus Gaussian noise of ``bandwidth`` times each latent dimension's spread.
:class:`KernelDraw` makes that noise a group of rows at a time, as decoding reads them, so that no whole-model copy
of the latents is made; the numbers are the ones a single ``torch.randn(N, D)`` would give (:data:`NOISE_ROWS`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from geosane.autoencoder import Latents
from geosane.scale import Scale

__all__ = ["KernelDraw", "sample_latents"]

#: Rows of noise drawn at once. A multiple of 16: PyTorch's CPU normal sampler transforms uniform draws in groups of
#: 16 values, so blocks of whole groups, drawn in order, give the same numbers as one draw of every row.
NOISE_ROWS = 1024


class KernelDraw:
    """One anchor's latents moved by the kernel: ``anchor + randn(N, D) * spread * bandwidth``, computed for the rows
    decoding asks for (:meth:`rows`) from a copy of the candidate's generator."""

    def __init__(self, anchor: Latents, spread: torch.Tensor, bandwidth: float, generator: torch.Generator) -> None:
        self.anchor, self.spread, self.bandwidth = anchor, spread, bandwidth
        self.start_state = generator.get_state()  # the draw can be replayed from here (reading rows again)
        self.restart()

    def restart(self) -> None:
        """Back to the first row of noise."""
        self.generator = torch.Generator().set_state(self.start_state)
        self.noise = torch.empty(0, self.anchor.values.shape[1])  # rows noise_first.. of the noise drawn so far
        self.noise_first = 0

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole model."""
        return self.anchor.num_tokens

    @property
    def scale(self) -> Scale:
        """The anchor's scale, which decoding restores."""
        return self.anchor.scale

    def block_end(self, start: int) -> int:
        """Where the block of noise rows that starts at ``start`` ends: :data:`NOISE_ROWS` on, or the model's end when
        fewer than 16 values would be left (a draw under 16 values takes another path through the sampler)."""
        n, d = self.anchor.values.shape
        end = min(start + NOISE_ROWS, n)
        return n if 0 < (n - end) * d < 16 else end

    def rows(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The drawn latents ``first..last-1`` (reads go forward; an earlier row replays the draw from the start).

        Args:
            first: the first token.
            last: one past the last token.

        Returns:
            Values, positions and zero counts, as :meth:`Latents.rows`.
        """
        if first < self.noise_first:
            self.restart()
        drawn = self.noise_first + len(self.noise)
        parts = [self.noise]  # rows noise_first..drawn-1, then the new blocks
        while drawn < last:
            end = self.block_end(drawn)
            parts.append(torch.randn(end - drawn, self.noise.shape[1], generator=self.generator))
            drawn = end
        self.noise = (torch.cat(parts) if len(parts) > 1 else parts[0])[first - self.noise_first :]
        self.noise_first = first
        noise = self.noise[: last - first] * self.spread * self.bandwidth
        return self.anchor.values[first:last] + noise, *self.anchor.rows(first, last)[1:]

    def latents(self) -> Latents:
        """Every row at once (small models and tests; generation streams :meth:`rows`)."""
        return replace(self.anchor, values=self.rows(0, self.num_tokens)[0])


def spread_of(anchors: list[Latents]) -> torch.Tensor:
    """Each latent dimension's spread over the tokens, averaged over the anchors (ones for a one-token model)."""
    if len(anchors) == 1:  # the same numbers as the stacked form below, without a copy of the latents
        values = anchors[0].values
        return values.std(dim=0) if len(values) > 1 else torch.ones(values.shape[1])
    stacked = torch.stack([a.values for a in anchors])
    return stacked.std(dim=1).mean(dim=0) if stacked.shape[1] > 1 else torch.ones(stacked.shape[2])


def sample_latents(
    anchors: list[Latents], sampling: str, bandwidth: float, generator: torch.Generator
) -> tuple[Latents | KernelDraw, int]:
    """One draw from the kernel density around the anchors' latents (see the module's docstring), and the anchor it
    is centred on (``joint``; the first anchor otherwise, whose layout and kept tensors it takes).

    Args:
        anchors: the anchors' latents (the same positions).
        sampling: ``joint``, ``token`` or ``individual``.
        bandwidth: the kernel's width in units of each latent dimension's spread.
        generator: the candidate's generator.

    Returns:
        The drawn latents (``joint``: drawn as they are read) and the anchor they are centred on.
    """
    if sampling == "joint":
        chosen = int(torch.randint(len(anchors), (1,), generator=generator))
        return KernelDraw(anchors[chosen], spread_of(anchors), bandwidth, generator), chosen
    stacked = torch.stack([a.values for a in anchors])  # [A, N, D]
    n_anchors, n, d = stacked.shape
    shape = (n, 1) if sampling == "token" else (n, d)
    pick = torch.randint(n_anchors, shape, generator=generator).expand(n, d)
    center = stacked.gather(0, pick.unsqueeze(0)).squeeze(0)
    scale = Scale(
        torch.stack([a.scale.mean for a in anchors]).mean(), torch.stack([a.scale.std for a in anchors]).mean()
    )
    noise = torch.randn(n, d, generator=generator) * spread_of(anchors) * bandwidth
    return replace(anchors[0], values=center + noise, scale=scale), 0
