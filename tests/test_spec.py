"""The one parser of ``[scheme:]name[?key=value&...]``: typed values, and unknown keys, repeated keys, missing
names and values of the wrong type named."""

from __future__ import annotations

import pytest

from geosane.errors import GeoSANEError
from geosane.spec import int_or_ints, parse_spec

TIMM = {"in_chans": int, "seed": int, "channels": int_or_ints}


def test_a_spec_is_its_scheme_name_and_typed_options() -> None:
    spec = parse_spec("timm:test_resnet?in_chans=13&channels=16,32", "timm", TIMM)
    assert (spec.scheme, spec.name) == ("timm", "test_resnet")
    assert spec.options == {"in_chans": "13", "channels": "16,32"}
    assert spec.typed == {"in_chans": 13, "channels": (16, 32)}
    assert str(spec) == "timm:test_resnet?in_chans=13&channels=16,32"
    assert str(spec.with_options(seed=3, in_chans=None)) == "timm:test_resnet?in_chans=13&channels=16,32&seed=3"
    bare = parse_spec("cloudmask?holdout=landsat5")
    assert (bare.scheme, bare.name, bare.typed) == (None, "cloudmask", {"holdout": "landsat5"})


@pytest.mark.parametrize(
    ("text", "scheme", "message"),
    [
        ("test_resnet", "timm", "expected timm:NAME"),
        ("timm:?in_chans=3", "timm", "no name before the options"),
        ("timm:x?in_chans", "timm", "got option 'in_chans'"),
        ("timm:x?in_chans=", "timm", "got option 'in_chans='"),
        ("timm:x?in_chans=3&in_chans=4", "timm", "option 'in_chans' is given twice"),
        ("timm:x?colour=red", "timm", r"unknown option\(s\) \['colour'\]; known: in_chans, seed, channels"),
        ("timm:x?seed=one", "timm", "option seed must be an integer, got 'one'"),
        ("timm:x?channels=16,x", "timm", "option channels must be an integer or comma-separated integers"),
    ],
)
def test_a_bad_spec_is_named(text: str, scheme: str, message: str) -> None:
    with pytest.raises(GeoSANEError, match=message):
        parse_spec(text, scheme, TIMM)
