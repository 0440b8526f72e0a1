"""Ranking on the selection split: detection chips and their box masks line up with the images, and the per-pixel
score tells features that see the boxes from masks that do not fit the images."""

from __future__ import annotations

import pytest
import timm
import torch

from geosane.generation import RANKINGS, reestimate_batchnorm
from geosane.generation.ranking import box_chips, diversity, pixel_score, rank, ranking_of


@pytest.mark.parametrize(
    ("height", "width", "rows", "columns"), [(224, 224, 1, 1), (300, 500, 2, 3), (448, 1000, 2, 5)]
)
def test_chips_cover_an_image_edge_to_edge(height: int, width: int, rows: int, columns: int) -> None:
    """The fewest 224-pixel chips that cover the image, the last row and column ending at its edges."""
    image = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width)
    chips, masks = box_chips([image], [torch.zeros(0, 4)], 224)
    assert chips.shape == (rows * columns, 1, 224, 224) and bool((masks == 0).all())
    assert torch.equal(chips[0, 0], image[0, :224, :224])
    assert torch.equal(chips[-1, 0], image[0, -224:, -224:])
    covered = torch.zeros(height, width, dtype=torch.bool)
    for chip in chips[:, 0].long():  # each pixel's value is its index: mark where every chip came from
        covered.view(-1)[chip.reshape(-1)] = True
    assert bool(covered.all())


def test_box_masks_follow_the_boxes_in_each_chip() -> None:
    """Boxes are (xmin, ymin, xmax, ymax) in pixels: a wide box stays wide in its chip; a small image is padded, and
    its padding is ignored (255); classes come from the labels."""
    wide = torch.zeros(3, 300, 500)
    small = torch.ones(3, 100, 120)
    targets = [
        torch.tensor([[10.0, 20.0, 50.0, 30.0]]),  # one class: the label is 1
        {"boxes": torch.tensor([[0.0, 0.0, 40.0, 10.0]]), "labels": torch.tensor([2])},
    ]
    chips, masks = box_chips([wide, small], targets, 224)
    assert chips.shape == (2 * 3 + 1, 3, 224, 224) and masks.shape == (7, 224, 224)
    first = torch.zeros(224, 224, dtype=torch.long)
    first[20:30, 10:50] = 1
    assert torch.equal(masks[0], first)
    assert int((masks[1:6] == 1).sum()) == 0  # the box lies only in the first chip (top left)
    padded = masks[6]
    assert torch.equal(padded[:10, :40], torch.full((10, 40), 2)) and int((padded[:100, :120] == 2).sum()) == 400
    assert bool((padded[100:] == 255).all() and (padded[:, 120:] == 255).all())
    assert bool((chips[6, :, :100, :120] == 1).all() and (chips[6, :, 100:] == 0).all())


def test_the_detection_score_rewards_features_that_find_the_boxes() -> None:
    """Bright wide rectangles on dark ground: a backbone's features separate them, so masks at the rectangles score
    high; the same masks transposed (x and y swapped) do not fit the images and score low."""
    torch.manual_seed(0)
    images, targets = [], []
    for _ in range(3):
        image = torch.rand(3, 256, 256) * 0.2
        boxes = []
        for _ in range(4):
            x, y = torch.randint(0, 150, (2,)).tolist()
            image[:, y : y + 24, x : x + 96] += 1.0
            boxes.append([x, y, x + 96, y + 24])
        images.append(image)
        targets.append(torch.tensor(boxes, dtype=torch.float32))
    backbone = timm.create_model("test_resnet", features_only=True).eval()
    chips, masks = box_chips(images, targets, 128)
    with torch.no_grad():
        right, predicted = pixel_score(backbone, chips, masks, 2)
        transposed, _ = pixel_score(backbone, chips, masks.transpose(1, 2), 2)
    assert right > 0.8 and transposed < right - 0.2
    assert predicted.dtype == torch.long and set(predicted.unique().tolist()) <= {0, 1}


def test_batchnorm_is_re_estimated_in_train_mode_without_touching_weights() -> None:
    """Images come class by class (as datasets list them); the statistics must be the whole set's, not an average
    of within-class ones."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    classes = [torch.randn(16, 3, 32, 32) + shift for shift in (-6.0, 0.0, 6.0)]  # three classes, far apart
    images = torch.cat(classes)  # three equal batches: their cumulative average is the mean
    layers = reestimate_batchnorm(model, images, batch=16)
    assert layers == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    first = model.conv1[0] if isinstance(model.conv1, torch.nn.Sequential) else model.conv1
    with torch.no_grad():
        outputs = first(images)  # what the first BatchNorm sees
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(bn.running_mean, outputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    whole = outputs.var(dim=(0, 2, 3))
    within = torch.stack([first(c).var(dim=(0, 2, 3)) for c in classes]).mean(0).detach()
    assert torch.allclose(bn.running_var, whole, rtol=0.25)  # the whole set's variance ...
    assert (bn.running_var > 1.5 * within).float().mean() > 0.5  # ... not the classes' own


def test_every_task_model_has_one_ranking_and_the_best_comes_first() -> None:
    kinds = {ranking_of(task, kept) for task in ("classification", "segmentation", "detection") for kept in (0, 1)}
    assert kinds == set(RANKINGS)
    model = torch.nn.Linear(1, 1)
    ranked = rank([(model, {"candidate": i, "selection_score": s}) for i, s in enumerate([0.2, 0.7, 0.7, 0.1])])
    assert [info["candidate"] for _, info in ranked] == [1, 2, 0, 3]  # ties: the earlier candidate


def test_diversity_measures_candidates_against_each_other() -> None:
    results = [
        ({"w": torch.ones(4)}, {"distance": 0.0, "predictions": torch.tensor([0, 1])}),
        ({"w": torch.ones(4) * 2}, {"distance": 1.0, "predictions": torch.tensor([0, 0])}),
    ]
    spread = diversity(results, ())
    assert spread["candidates"] == 2 and spread["distance_to_anchor"] == {"mean": 0.5, "min": 0.0, "max": 1.0}
    assert spread["pairwise_distance"]["mean"] == pytest.approx(0.5)  # ||1 - 2|| / ||2||
    assert spread["prediction_disagreement"]["mean"] == 0.5
