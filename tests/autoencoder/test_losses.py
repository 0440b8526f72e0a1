from __future__ import annotations

import math

import pytest
import torch

from geosane.autoencoder.losses import LossConfig, geosane_loss, masked_mse, nt_xent


def test_masked_mse_counts_real_values_only() -> None:
    target = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    prediction = torch.tensor([[1.0, 2.0, 3.0, 100.0]])  # wrong by 1 in one real value, and in the padding
    mask = torch.tensor([[True, True, True, False]])
    assert masked_mse(prediction, target, mask) == pytest.approx(1 / 3)


def test_nt_xent_by_hand() -> None:
    # two windows, two identical views each: every row's positive has similarity 1/t, its two negatives 0
    a = torch.eye(2)
    temperature = 0.5
    expected = math.log(1 + 2 / math.exp(1 / temperature))  # -log(e^(1/t) / (e^(1/t) + 1 + 1))
    assert nt_xent(a, a.clone(), temperature) == pytest.approx(expected)
    # swapping the second views makes the negatives the most similar: the loss rises
    assert nt_xent(a, a.flip(0), temperature) > expected


def test_geosane_loss_weights_its_terms() -> None:
    target = torch.zeros(1, 2, 3)
    mask = torch.ones_like(target, dtype=torch.bool)
    recon = (target + 1.0, target - 3.0)  # squared errors 1 and 9: reconstruction (1 + 9) / 2 = 5
    proj = (torch.eye(2), torch.eye(2))
    out = geosane_loss(recon, proj, (target, target), (mask, mask), LossConfig(gamma=0.25, temperature=0.5))
    contrastive = math.log(1 + 2 / math.exp(2))
    assert float(out["reconstruction"]) == pytest.approx(5.0)
    assert float(out["contrastive"]) == pytest.approx(contrastive)
    assert float(out["loss"]) == pytest.approx(0.25 * contrastive + 0.75 * 5.0)


def test_each_view_is_measured_against_its_own_target() -> None:
    """Shifted views reconstruct their own windows; each view's mask decides which of its values count."""
    first, second = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    masks = (torch.ones(1, 2, 3, dtype=torch.bool), torch.tensor([[[True, False, False], [True, False, False]]]))
    proj = (torch.eye(2), torch.eye(2))
    exact = geosane_loss((first, second), proj, (first, second), masks)
    assert float(exact["reconstruction"]) == 0.0
    # view 2 off by 2 on its two counted values only: its error is 4, the mean over views 2
    off = second.clone()
    off[..., 0] += 2
    off[..., 1:] += 100  # not counted
    assert float(geosane_loss((first, off), proj, (first, second), masks)["reconstruction"]) == pytest.approx(2.0)
