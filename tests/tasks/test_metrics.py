"""Task metrics against hand-computed values (accuracy, mIoU, mAP)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geosane.bench import (
    TaskData,
    score,
)


class Fixed(nn.Module):
    """A 'model' whose outputs are given: the inputs are its outputs (logits), or detections by image index."""

    def __init__(self, detections: list[dict[str, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, x):
        if self.detections is not None:
            return [self.detections[int(image.flatten()[0])] for image in x]
        return x


def task_data(task: str, x, y, classes: int) -> TaskData:
    return TaskData("hand", task, ["b"], [str(c) for c in range(classes)], (x, y), (x, y), (x, y))


def test_metrics_match_hand_computed_values() -> None:
    # top-1: argmax of [[2,1,0],[0,3,1],[1,0,4],[5,0,0]] is [0,1,2,0]; labels [0,2,2,1] -> 2 of 4
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 4], [5, 0, 0]])
    assert score(Fixed(), task_data("classification", logits, torch.tensor([0, 2, 2, 1]), 3), "test") == 0.5
    # mIoU over classes in prediction or target, 255 ignored: prediction [0,0,1,1], target [0,1,1,255]
    # class 0: 1/2, class 1: 1/2 (pixel 4 ignored), class 2: absent from both -> left out: mIoU 0.5
    prediction = torch.tensor([0, 0, 1, 1]).view(1, 1, 2, 2)
    maps = torch.nn.functional.one_hot(prediction, 3).permute(0, 4, 2, 3, 1).squeeze(-1).float()
    target = torch.tensor([0, 1, 1, 255]).view(1, 2, 2)
    assert score(Fixed(), task_data("segmentation", maps, target, 3), "test") == pytest.approx(0.5)
    # mAP@0.5: two trees; one found (score 0.9), one false box (0.8): precision 1 up to recall 0.5, so COCO's
    # 101-point interpolation gives 51/101
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    found = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
    }
    image = [torch.zeros(3, 8, 8)]
    value = score(Fixed([found]), task_data("detection", image, [boxes], 1), "test")
    assert value == pytest.approx(51 / 101, abs=1e-4)
    # a perfect detector scores 1
    perfect = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}
    assert score(Fixed([perfect]), task_data("detection", image, [boxes], 1), "test") == pytest.approx(1.0)
