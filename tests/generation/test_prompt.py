"""The prompt: built by timm with the generation's seed unless its URI names one, its own weights returned beside
shapes that hold no values, its classifier's keys found, and its task model seeded by the caller."""

from __future__ import annotations

import pytest
import timm
import torch

from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig, build_prompt


def test_the_prompt_is_shapes_and_its_weights_come_beside_it() -> None:
    prompt, own = build_prompt(GenerateConfig(prompt="timm:test_resnet?in_chans=4&num_classes=6", seed=3))
    assert (prompt.arch, prompt.in_chans, prompt.num_classes) == ("test_resnet", 4, 6)
    assert all(t.is_meta for t in prompt.shapes.values()) and prompt.shapes.keys() == own.keys()
    assert all(prompt.shapes[k].shape == v.shape and prompt.shapes[k].dtype == v.dtype for k, v in own.items())
    assert prompt.head == ("fc.weight", "fc.bias")
    torch.manual_seed(3)
    expected = timm.create_model("test_resnet", in_chans=4, num_classes=6).state_dict()
    assert all(torch.equal(own[k], expected[k]) for k in expected)  # the generation's seed seeds the prompt


def test_a_seed_in_the_uri_wins_and_sizes_reach_timm() -> None:
    prompt, own = build_prompt(GenerateConfig(prompt="timm:test_resnet?seed=9&channels=16,24,24,48", seed=3))
    torch.manual_seed(9)
    expected = timm.create_model("test_resnet", channels=(16, 24, 24, 48)).state_dict()
    assert prompt.sizes == {"channels": (16, 24, 24, 48)}
    assert all(torch.equal(own[k], expected[k]) for k in expected)
    torch.manual_seed(0)
    model = prompt.task_model("segmentation", 3)
    assert model.backbone is not None


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("timm:resnet_nonexistent", "unknown timm model 'resnet_nonexistent'"),
        ("timm:test_resnet?in_chans=three", "option in_chans must be an integer"),
        ("timm:test_resnet?colour=red", r"unknown option\(s\) \['colour'\]"),
        ("timm:test_resnet?seed=1&seed=2", "option 'seed' is given twice"),
    ],
)
def test_a_bad_prompt_is_named(uri: str, message: str) -> None:
    with pytest.raises(GeoSANEError, match=message):
        build_prompt(GenerateConfig(prompt=uri))
