from __future__ import annotations

import pytest
import torch
from torch import nn

from geosane.errors import GeoSANEError
from geosane.tasks import FineTuning, Recipe, create_model, score_samples


class Fixed(nn.Module):
    """A "model" that answers the same prediction for any input: logits of one class per pixel or image."""

    def __init__(self, prediction: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.logits = nn.functional.one_hot(prediction, num_classes).movedim(-1, 1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_mean_iou_by_hand() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
    # class 0: |{0}| / |{0,1,5}| = 1/3; class 1: 2/3; class 2: 1/2; ignored pixels do not count
    value = score_samples(Fixed(prediction, 3), "segmentation", torch.zeros(1, 1, 2, 4), target, 3)
    assert value == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # a class in neither prediction nor target is left out of the mean, not counted as 0
    assert score_samples(Fixed(prediction, 5), "segmentation", torch.zeros(1, 1, 2, 4), target, 5) == value


def test_accuracy_by_hand() -> None:
    prediction, target = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])
    assert score_samples(Fixed(prediction, 3), "classification", torch.zeros(4, 1), target, 3) == 0.75


def fine_tuned(epochs: int, stop_after: int | None = None) -> dict[str, torch.Tensor]:
    """test_resnet fine-tuned on random images with the one recipe; with ``stop_after``, restarted from its state
    (weights and :meth:`FineTuning.state`) after that many epochs, as a resumed Tune trial is."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 4, (40,))
    recipe = Recipe(epochs=epochs, lr=1e-2, batch_size=8)
    model = create_model("test_resnet", "classification", 3, 4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tuning = FineTuning(model, (x, y), "classification", recipe, seed=3)
    for _ in range(stop_after or epochs):
        tuning.epoch()
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())  # it trained
    if stop_after is None:
        return model.state_dict()
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, **tuning.state()}
    restarted = create_model("test_resnet", "classification", 3, 4)
    restarted.load_state_dict(saved["model"])
    tuning = FineTuning(restarted, (x, y), "classification", recipe, seed=3)
    tuning.restore(saved)
    for _ in range(epochs - stop_after):
        tuning.epoch()
    return restarted.state_dict()


def test_the_fine_tuning_recipe_is_seeded_and_resumes_exactly() -> None:
    once, again, resumed = fine_tuned(3), fine_tuned(3), fine_tuned(3, stop_after=1)
    for key in once:
        assert torch.equal(once[key], again[key]), key
        assert torch.equal(once[key], resumed[key]), key


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_segmentation_models_take_any_band_count(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, "segmentation", in_chans=6, num_classes=3)
    x = torch.randn(2, 6, 64, 64)
    assert model(x).shape == (2, 3, 64, 64)
    # a head that says "class 1" everywhere, on a target whose left half is class 1 and right half class 0:
    # IoU of class 0 is 0, of class 1 is 1/2 (class 2 occurs nowhere), so the mean is 1/4
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[..., :32] = 1
    assert score_samples(model, "segmentation", x, target, 3) == pytest.approx(0.25)


def test_classification_and_errors() -> None:
    model = create_model("test_vit", "classification", in_chans=13, num_classes=10, img_size=64)
    assert model(torch.randn(1, 13, 64, 64)).shape == (1, 10)
    with pytest.raises(GeoSANEError, match="unknown timm architecture"):
        create_model("nope", "classification", 3, 10)
    with pytest.raises(GeoSANEError, match="unknown task 'depth'"):
        create_model("test_resnet", "depth", 3, 10)


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_detection_learns_on_real_tree_boxes(arch: str, shared) -> None:
    """Faster R-CNN on a timm backbone: real NEON boxes give finite losses, a few steps lower them, and eval mode
    returns detections; any band count goes in."""
    from geosane import datasets

    torch.manual_seed(0)
    trees = datasets.get("neon_trees", str(shared / "data")).load("train", limit=1)
    image, boxes = trees.x[0], trees.y[0]
    targets = [{"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}]
    model = create_model(arch, "detection", in_chans=3, num_classes=1, **({"img_size": 64} if "vit" in arch else {}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(4):
        loss = sum(model([image], targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        (found,) = model([image])
    assert set(found) == {"boxes", "labels", "scores"}
    multispectral = create_model("test_resnet", "detection", in_chans=13, num_classes=2).eval()
    with torch.no_grad():
        (found,) = multispectral([torch.randn(13, 96, 120)])
    assert found["boxes"].shape[-1] == 4
