"""Starting a task model from pretrained weights: the stem's filters on their bands by name (a colour name and
Sentinel-2's band for it are one band) or adapted keeping the response to a constant image, the head kept only
where it fits, and a zoo lineage that starts from ImageNet's EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import timm
import torch

from geosane.errors import GeoSANEError
from geosane.tasks import adapt_input, band_mapped_input, create_model, start_from


def test_rgb_filters_go_to_their_bands_in_a_multispectral_stem() -> None:
    from geosane.datasets.eurosat import EuroSATMS, EuroSATRGB

    rgb, ms = list(EuroSATRGB.bands), list(EuroSATMS.bands)
    weight = torch.randn(8, 3, 3, 3)
    mapped = band_mapped_input(weight, rgb, ms)
    assert mapped is not None and mapped.shape == (8, 13, 3, 3)
    for channel, band in enumerate(rgb):  # B04, B03, B02 land where the 13-band data has them
        assert torch.equal(mapped[:, ms.index(band)], weight[:, channel])
    others = [i for i, band in enumerate(ms) if band not in rgb]
    assert not mapped[:, others].any()
    assert band_mapped_input(weight, ["Red", "Green", "Blue"], ms) is None  # names it cannot place: timm's adaptation


@pytest.mark.parametrize(("bands", "target"), [(3, 13), (6, 3), (6, 12), (13, 4)])
def test_an_input_convolution_adapts_to_any_band_count_keeping_its_response_to_a_constant_image(
    bands: int, target: int
) -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, bands, 3, 3)
    adapted = adapt_input(weight, target)
    assert adapted.shape == (8, target, 3, 3)
    before = torch.nn.functional.conv2d(torch.ones(1, bands, 5, 5), weight)
    after = torch.nn.functional.conv2d(torch.ones(1, target, 5, 5), adapted)
    if target % bands == 0 or bands >= target:  # exact when the bands repeat whole or fold onto fewer
        assert torch.allclose(before, after, atol=1e-5)


def test_a_classifier_starts_from_weights_of_other_bands_and_classes() -> None:
    torch.manual_seed(1)
    weights = timm.create_model("test_resnet", num_classes=1000).state_dict()  # an RGB "ImageNet" classifier
    ms = ["B01", "B02", "B03", "B04", "B05"]
    torch.manual_seed(2)
    model = create_model("test_resnet", "classification", 5, 10)
    fresh_head = model.state_dict()["fc.weight"].clone()
    how = start_from(model, "test_resnet", "classification", weights, (["Red", "Green", "Blue"], ms))
    assert how == "stem mapped by band (Red, Green, Blue), new head"
    stem = model.state_dict()["conv1.0.weight"]
    for colour, band in (("Red", "B04"), ("Green", "B03"), ("Blue", "B02")):  # by name, across naming schemes
        assert torch.equal(
            stem[:, ms.index(band)], weights["conv1.0.weight"][:, ["Red", "Green", "Blue"].index(colour)]
        )
    assert not stem[:, ms.index("B01")].any() and not stem[:, ms.index("B05")].any()
    assert torch.equal(model.state_dict()["fc.weight"], fresh_head)
    assert all(
        torch.equal(model.state_dict()[k], v) for k, v in weights.items() if not k.startswith(("fc.", "conv1.0"))
    )
    same = create_model("test_resnet", "classification", 3, 1000)
    assert start_from(same, "test_resnet", "classification", weights) == "stem as is, head kept"
    with pytest.raises(GeoSANEError, match="lack 1 tensor"):
        start_from(same, "test_resnet", "classification", {k: v for k, v in weights.items() if k != "bn1.weight"})


def test_a_segmentation_backbone_starts_from_a_classifier_with_its_stem_adapted() -> None:
    torch.manual_seed(1)
    weights = timm.create_model("test_resnet", num_classes=1000).state_dict()
    model = create_model("test_resnet", "segmentation", 6, 3)
    how = start_from(model, "test_resnet", "segmentation", weights, (None, ["a", "b", "c", "d", "e", "f"]))
    assert how == "stem adapted, new head"
    assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], adapt_input(weights["conv1.0.weight"], 6))
    assert torch.equal(model.backbone.state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])


def test_a_zoo_lineage_starts_from_imagenet_with_its_stem_on_the_sentinel2_bands() -> None:
    """A member of a group with ``start_from: pretrained:efficientnet_lite0`` on 13-band EuroSAT begins as the
    ImageNet model: its red, green and blue filters on B04, B03 and B02, the other bands at zero."""
    from geosane.collection.sources import load
    from geosane.zoo import start_weights

    imagenet = load("pretrained:efficientnet_lite0")
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    model = create_model("tf_efficientnet_lite0", "classification", 13, 5, 64)
    member = {"start_from": "pretrained:efficientnet_lite0", "arch": "tf_efficientnet_lite0"}
    how = start_weights(model, member, {"task": "classification", "bands": bands})
    assert how == "stem mapped by band (Red, Green, Blue), new head"
    stem, source = model.state_dict()["conv_stem.weight"], imagenet.state_dict["conv_stem.weight"]
    assert [torch.equal(stem[:, bands.index(b)], source[:, c]) for c, b in enumerate(("B04", "B03", "B02"))] == [
        True
    ] * 3
    assert int(stem.abs().sum(dim=(0, 2, 3)).ne(0).sum()) == 3
    assert torch.equal(
        model.state_dict()["blocks.6.0.conv_pwl.weight"], imagenet.state_dict["blocks.6.0.conv_pwl.weight"]
    )
