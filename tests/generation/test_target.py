"""The target data: unlabeled train images and the selection split (never test), refused where its bands, task or
classes do not fit the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane import datasets
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig, build_prompt
from geosane.generation.target import BATCHNORM_IMAGES, SELECTION_IMAGES, load_target


def target(prompt: str, data: str | None, root: Path, task: str = "classification"):
    config = GenerateConfig(prompt=prompt, data=data, task=task)
    return load_target(config, build_prompt(config)[0], str(root / "data"))


def test_the_target_is_train_images_and_the_selection_split(shared: Path) -> None:
    loaded = target("timm:test_resnet?num_classes=10", "eurosat_rgb", shared)
    dataset = datasets.get("eurosat_rgb", str(shared / "data"))
    selection = dataset.load("selection", limit=SELECTION_IMAGES)
    assert len(loaded.unlabeled) == min(BATCHNORM_IMAGES, len(dataset.load("train").x))
    assert loaded.selection_x.equal(selection.x) and loaded.selection_y.equal(selection.y)
    assert loaded.bands == list(dataset.bands) and loaded.classes == list(dataset.classes)
    assert target("timm:test_resnet", None, shared) is None


@pytest.mark.parametrize(
    ("prompt", "data", "task", "message"),
    [
        ("timm:test_resnet?in_chans=13", "eurosat_rgb", "classification", "3 bands, the prompt .* in_chans=13"),
        ("timm:test_resnet", "eurosat_rgb", "classification", "10 classes, the prompt test_resnet num_classes=1000"),
        ("timm:test_resnet?in_chans=6", "cloudmask", "classification", "segmentation dataset, the task is class"),
    ],
)
def test_data_that_does_not_fit_the_prompt_is_named(
    prompt: str, data: str, task: str, message: str, shared: Path
) -> None:
    with pytest.raises(GeoSANEError, match=message):
        target(prompt, data, shared, task)
