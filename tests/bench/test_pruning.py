"""Structured pruning to a target parameter count."""

from __future__ import annotations

import pytest
import torch

from geosane.bench import (
    prune_to,
)


@pytest.mark.parametrize("channels", [[32, 32, 32, 48], [32, 24, 24, 48]])
def test_pruned_models_have_the_target_parameter_count(channels: list[int]) -> None:
    import timm

    torch.manual_seed(0)
    large = timm.create_model("test_resnet", num_classes=10)
    target = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=10, channels=channels).parameters())
    small, ratio = prune_to(large, target, torch.randn(2, 3, 64, 64), [large.get_classifier()])
    count = sum(p.numel() for p in small.parameters())
    assert abs(count - target) <= 0.1 * target and 0 < ratio < 1
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 10)  # the classifier keeps its classes
    assert sum(p.numel() for p in large.parameters()) == 373_658  # the collection model itself is untouched
