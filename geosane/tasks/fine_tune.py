"""The one fine-tuning recipe: AdamW, a one-cycle schedule, seeded batches and horizontal flips.

The zoo trains its members with it, the bench fine-tunes every initialization with it, and the benchmarks call it,
so "the same budget" means the same code. One :class:`FineTuning` holds the optimizer, the schedule and the
generator that orders batches and draws flips; :meth:`FineTuning.epoch` trains one epoch, and :meth:`state` /
:meth:`restore` carry a run across a restart (a Tune trial resumed from its checkpoint).

    tuning = FineTuning(model, data.train, data.task, Recipe(epochs=5, lr=1e-3), seed=0)
    for epoch in range(1, 6):
        loss = tuning.epoch()
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosane.config import settings
from geosane.tasks.metrics import detection_target, device_of, to_device

__all__ = ["Distillation", "FineTuning", "Recipe", "batch_loss"]


@settings(frozen=True)
class Distillation:
    """Knowledge distillation: ``alpha`` of the loss from the teacher's soft targets at ``temperature``."""

    temperature: float = 4.0
    alpha: float = 0.5


@settings(frozen=True)
class Recipe:
    """How long and how fast: the budget every initialization of a task gets."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.05
    flips: bool = True  # a horizontal flip with probability 1/2 per batch (labels, masks and boxes follow)
    distillation: Distillation = field(default_factory=Distillation)  # used when the model has a ``teacher``


class FineTuning:
    """One model's fine-tuning state: AdamW over its trainable parameters, a one-cycle schedule over
    ``recipe.epochs`` epochs, and a generator seeded with ``seed`` that orders the batches and draws the flips."""

    def __init__(self, model: nn.Module, train: tuple[Any, Any], task: str, recipe: Recipe, seed: int) -> None:
        self.model, self.train, self.task, self.recipe = model, train, task, recipe
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        self.steps_per_epoch = max(1, len(train[0]) // recipe.batch_size)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, recipe.lr, total_steps=recipe.epochs * self.steps_per_epoch
        )
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> float:
        """Train one epoch; returns the last batch's loss."""
        self.model.train()
        loss = float("nan")
        for batch in self.batches():
            value = batch_loss(self.model, self.task, batch, self.flip(), self.recipe.distillation)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            self.optimizer.step()
            self.schedule.step()
            loss = value.item()
        return loss

    def batches(self) -> list[Any]:
        """One epoch's batches in a seeded random order (lists of images and targets for detection)."""
        x, y = self.train
        order = torch.randperm(len(x), generator=self.generator).tolist()
        size = self.recipe.batch_size
        picked = [order[i * size : (i + 1) * size] for i in range(self.steps_per_epoch)]
        if self.task == "detection":
            return [([x[i] for i in p], [y[i] for i in p]) for p in picked]
        return [(x[p], y[p]) for p in picked]

    def flip(self) -> bool:
        """Whether the next batch is flipped (drawn from the generator, after the batch order)."""
        return self.recipe.flips and bool(torch.rand(1, generator=self.generator) < 0.5)

    def state(self) -> dict[str, Any]:
        """What a restart needs besides the model's weights."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (the model's weights are loaded by the caller)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])


def batch_loss(model: nn.Module, task: str, batch: Any, flip: bool, distillation: Distillation) -> torch.Tensor:
    """The loss of one batch, flipped when ``flip`` (labels, masks and boxes follow the images).

    Args:
        model: the task model; one with a ``teacher`` attribute is distilled from it (soft targets and labels).
        task: ``classification``, ``multilabel``, ``segmentation`` or ``detection``.
        batch: images and targets, as :meth:`FineTuning.batches` gives them.
        flip: flip the batch horizontally.
        distillation: the soft targets' temperature and weight.

    Returns:
        Cross entropy (label 255 ignored), binary cross entropy for multi-label, or the detector's summed losses.
    """
    x, y = to_device(batch, device_of(model))
    if task == "detection":
        images, targets = [], []
        for image, found in zip(x, y, strict=True):
            target = detection_target(found)
            if flip:  # x' = W - x: xmin and xmax trade places
                width, boxes = image.shape[-1], target["boxes"]
                image = image.flip(-1)
                flipped = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
                target = {**target, "boxes": flipped}
            images.append(image)
            targets.append(target)
        return sum(model(images, targets).values())
    if flip:
        x, y = x.flip(-1), (y.flip(-1) if task == "segmentation" else y)
    logits = model(x)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float())
    loss = F.cross_entropy(logits, y, ignore_index=255)
    teacher = getattr(model, "teacher", None)
    if teacher is not None:  # Hinton et al.: soft targets at temperature T, scaled by T^2
        with torch.no_grad():
            soft = F.softmax(teacher(x) / distillation.temperature, dim=1)
        distill = F.kl_div(F.log_softmax(logits / distillation.temperature, dim=1), soft, reduction="batchmean")
        loss = (1 - distillation.alpha) * loss + distillation.alpha * distillation.temperature**2 * distill
    return loss
