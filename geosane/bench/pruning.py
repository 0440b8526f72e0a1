"""Structured pruning to a parameter budget: the ``pruned`` baseline of lightweight targets."""

from __future__ import annotations

import torch
from torch import nn

from geosane.tasks import parameters

__all__ = ["prune_to"]


def prune_to(model: nn.Module, target: int, example: torch.Tensor, ignored: list[nn.Module]) -> tuple[nn.Module, float]:
    """Structurally prune ``model`` (torch-pruning's DepGraph, L2 magnitude of channel groups) until it has about
    ``target`` parameters: the pruning ratio is found by bisection on fresh copies.

    Args:
        model: the model to prune (left as it is).
        target: the parameter count to reach (within 2%).
        example: example inputs that trace the model.
        ignored: modules to keep whole (the classifier).

    Returns:
        The pruned copy and the ratio.
    """
    import copy

    import torch_pruning as tp

    def pruned(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model)
        ignore = [dict(candidate.named_modules())[n] for n, m in model.named_modules() if m in ignored]
        pruner = tp.pruner.MetaPruner(
            candidate,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignore,
        )
        pruner.step()
        return candidate

    low, high = 0.0, 0.95
    best = model
    for _ in range(12):
        middle = (low + high) / 2
        best = pruned(middle)
        count = parameters(best)
        if abs(count - target) <= 0.02 * target:
            break
        low, high = (middle, high) if count > target else (low, middle)
    return best, middle
