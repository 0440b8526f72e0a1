from __future__ import annotations

import pytest
import torch

from geosane.losses import LossConfig, geosane_loss, masked_normalized_mse, nt_xent


def test_masked_normalized_mse_ignores_padding_and_scale() -> None:
    target = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    prediction = torch.tensor([[1.0, 2.0, 3.0, 100.0]])  # wrong only in the padding
    assert masked_normalized_mse(prediction, target, mask) == 0
    # scaling everything by 1000 gives the same loss: the loss is about shape, not magnitude
    wrong = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    assert masked_normalized_mse(wrong * 1000, target * 1000, mask) == pytest.approx(float(masked_normalized_mse(wrong, target, mask)), rel=1e-5)
    std = torch.tensor([1.0, 2.0, 3.0]).std()
    expected = ((torch.tensor([1.0, 0.0, -1.0]) / std) ** 2).mean()
    assert masked_normalized_mse(wrong, target, mask) == pytest.approx(float(expected))


def test_nt_xent_prefers_matching_views() -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    matched = nt_xent(a, a + 0.01 * torch.randn(8, 16), 0.1)
    shuffled = nt_xent(a, a[torch.randperm(8)], 0.1)
    assert matched < 0.1 < shuffled


def test_geosane_loss_weights_its_terms() -> None:
    torch.manual_seed(0)
    target = torch.randn(4, 6, 10)
    mask = torch.ones_like(target, dtype=torch.bool)
    recon = (target + 0.1, target - 0.1)
    proj = (torch.randn(4, 8), torch.randn(4, 8))
    out = geosane_loss(recon, proj, target, mask, LossConfig(gamma=0.05, temperature=0.1))
    assert out["loss"] == pytest.approx(0.05 * float(out["contrastive"]) + 0.95 * float(out["reconstruction"]))
