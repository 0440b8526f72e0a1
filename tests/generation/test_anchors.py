"""Anchors: the prompt itself or the collection models a query selects, fitted to the prompt: as they are, cropped
for a lighter prompt, their input convolution mapped by band name or adapted for another band count, their
classifier kept where it fits; and a query that finds nothing says what exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from geosane.collection import Collection, sources
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig, build_prompt, fit_to_prompt, parse_query

from .conftest import make_generator


def test_an_anchor_keeps_its_classifier_where_it_fits_the_prompt() -> None:
    """A zoo model's trained classifier is what a generated model for the same classes decodes; for other classes
    the prompt's own (fresh) classifier stands in."""
    anchor = sources.load("timm:test_resnet?num_classes=10&seed=1").state_dict
    for classes in (10, 5):
        prompt, own = build_prompt(GenerateConfig(prompt=f"timm:test_resnet?num_classes={classes}", seed=2))
        fitted, how = fit_to_prompt(anchor, prompt, own, in_chans=3)
        assert prompt.head == ("fc.weight", "fc.bias") and how == "as is"
        assert torch.equal(fitted["fc.weight"], (anchor if classes == 10 else own)["fc.weight"])
        assert torch.equal(fitted["conv1.0.weight"], anchor["conv1.0.weight"])


def test_query_anchors_are_fitted_to_the_prompt_at_one_collection_version(
    autoencoder: str, collection: Collection
) -> None:
    generator = make_generator(
        autoencoder, "timm:test_resnet?in_chans=13&num_classes=10", collection.url, anchors="dataset=eurosat_rgb"
    )
    assert [a.name for a in generator.anchors] == ["test_resnet", "test_resnet"]
    assert {a.fitted for a in generator.anchors} == {"input convolution adapted"}  # 3-band anchors, 13-band prompt
    assert generator.source == {"url": collection.url, "version": collection.version}
    assert all(a.state_dict["conv1.0.weight"].shape[1] == 13 for a in generator.anchors)
    assert not generator.head_kept  # no target data: a new head


def test_a_lighter_prompt_takes_the_leading_block_of_a_larger_anchor(autoencoder: str, collection: Collection) -> None:
    generator = make_generator(
        autoencoder, "timm:mobilenetv3_large_075?num_classes=10", collection.url, anchors="family=mobilenetv3"
    )
    (anchor,) = generator.anchors
    assert anchor.name == "mobilenetv3_large_100" and "cropped" in anchor.fitted
    large = collection.export(collection.record("mobilenetv3_large_100"))
    small = timm.create_model("mobilenetv3_large_075", num_classes=10).state_dict()
    key = "conv_stem.weight"
    assert anchor.state_dict[key].shape == small[key].shape
    assert torch.equal(anchor.state_dict[key], large[key][: small[key].shape[0]])


def test_a_query_that_finds_nothing_says_what_exists(autoencoder: str, collection: Collection) -> None:
    with pytest.raises(GeoSANEError, match=r"no model .* matches \{'dataset': 'bigearthnet'\}.*eurosat_rgb"):
        make_generator(autoencoder, "timm:test_resnet", collection.url, anchors="dataset=bigearthnet")
    with pytest.raises(GeoSANEError, match=r"does not fit|fits the prompt"):
        make_generator(autoencoder, "timm:resnet18", collection.url, anchors="dataset=eurosat_rgb")
    with pytest.raises(GeoSANEError, match="expected key=value"):
        parse_query("family")
    with pytest.raises(GeoSANEError, match="need a collection"):
        make_generator(autoencoder, "timm:test_resnet", anchors="dataset=eurosat_rgb")


def test_an_imagenet_prompt_on_thirteen_bands_keeps_its_colours_on_their_bands(autoencoder: str, shared: Path) -> None:
    """The paper's protocol on Sentinel-2: the ImageNet prompt's red, green and blue filters go to B04, B03 and B02
    (timm would repeat them cyclically over the 13 bands), the other bands start at zero."""
    from geosane.collection.sources import load

    generator = make_generator(
        autoencoder,
        "timm:tf_efficientnet_lite0?in_chans=13&num_classes=10",
        data_root=str(shared / "data"),
        prompt_weights="pretrained:efficientnet_lite0",
        data="eurosat_ms",
    )
    (anchor,) = generator.anchors
    assert anchor.fitted == "the prompt itself, input convolution mapped by band (Red, Green, Blue)"
    stem, imagenet = anchor.state_dict["conv_stem.weight"], load("pretrained:efficientnet_lite0").state_dict
    bands = generator.target.bands
    for channel, band in enumerate(("B04", "B03", "B02")):
        assert torch.equal(stem[:, bands.index(band)], imagenet["conv_stem.weight"][:, channel])
    assert int(stem.abs().sum(dim=(0, 2, 3)).ne(0).sum()) == 3
    assert torch.equal(anchor.state_dict["blocks.6.0.conv_pwl.weight"], imagenet["blocks.6.0.conv_pwl.weight"])
