"""Sampling in the latent space: one anchor per candidate (joint), per token or per value, and a joint draw that
comes a block of rows at a time as decoding reads it, yet is one draw."""

from __future__ import annotations

import pytest
import torch

from geosane.autoencoder import Latents
from geosane.generation import sample_latents
from geosane.scale import Scale


def test_sampling_stays_with_one_anchor_per_candidate() -> None:
    """``joint`` moves one anchor; ``token`` takes each token from one anchor; ``individual`` mixes per value."""
    positions = torch.zeros(50, 3, dtype=torch.int64)
    base = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    anchors = [Latents(base + a, positions, Scale(torch.tensor(float(a)), torch.tensor(1.0))) for a in (0, 10)]
    generator = torch.Generator().manual_seed(0)
    joint, chosen = sample_latents(anchors, "joint", 0.0, generator)
    assert torch.equal(joint.latents().values, anchors[chosen].values) and joint.scale is anchors[chosen].scale
    token, _ = sample_latents(anchors, "token", 0.0, generator)
    offset = (token.values - base).round()  # 0 or 10 per token, the same for all of a token's dimensions
    assert (offset == offset[:, :1]).all() and set(offset[:, 0].tolist()) == {0.0, 10.0}
    individual, _ = sample_latents(anchors, "individual", 0.0, generator)
    offset = (individual.values - base).round()
    assert (offset != offset[:, :1]).any() and set(offset.flatten().tolist()) == {0.0, 10.0}
    spread, chosen = sample_latents(anchors, "joint", 0.5, generator)
    moved = spread.latents().values - anchors[chosen].values  # the kernel: about half of each dimension's spread
    assert 0.3 < float(moved.std() / base.std()) < 0.7


@pytest.mark.parametrize("rows", [1, 5, 1023, 1025, 3000])
@pytest.mark.parametrize("width", [1, 3, 16])
def test_a_joint_draw_read_in_pieces_is_one_draw(rows: int, width: int) -> None:
    """The noise comes a block of rows at a time as decoding reads (forward, overlapping, and once from the start
    again), and is the one ``randn(N, D)`` of the candidate's generator."""
    positions = torch.zeros(rows, 3, dtype=torch.int64)
    anchor = Latents(torch.randn(rows, width), positions, Scale(torch.tensor(0.0), torch.tensor(1.0)))
    reference = torch.Generator().manual_seed(5)
    torch.randint(1, (1,), generator=reference)  # sample_latents picks the anchor first
    spread = anchor.values.std(dim=0) if rows > 1 else torch.ones(width)
    expected = anchor.values + torch.randn(rows, width, generator=reference) * spread * 0.2
    draw, _ = sample_latents([anchor], "joint", 0.2, torch.Generator().manual_seed(5))
    lengths = torch.Generator().manual_seed(7)
    pieces, first = [], 0
    while first < rows:
        last = min(rows, first + int(torch.randint(1, 700, (1,), generator=lengths)))
        low = max(0, first - 4)
        pieces.append(draw.rows(low, last)[0][first - low :])
        first = last
    assert torch.equal(torch.cat(pieces), expected)
    assert torch.equal(draw.rows(0, rows)[0], expected)
