"""Generation's settings: checked when they are made, every problem named by its field, the same class the CLI's
options, the bench's variants and the service's request body are made from."""

from __future__ import annotations

import dataclasses

import pytest

from geosane.config import make
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig


@pytest.mark.parametrize(
    ("settings", "field", "reason"),
    [
        ({"prompt": "resnet18"}, "prompt", "expected timm:NAME"),
        ({"bandwidth": float("nan")}, "bandwidth", "finite number"),
        ({"bandwidth": 11.0}, "bandwidth", "less than or equal to 10"),
        ({"candidates": 0}, "candidates", "greater than or equal to 1"),
        ({"candidates": 1001}, "candidates", "less than or equal to 1000"),
        ({"candidates": 2, "top_k": 3}, "top_k", "at most candidates"),
        ({"sampling": "mixed"}, "sampling", "'joint', 'token' or 'individual'"),
        ({"seed": -1}, "seed", "must be a whole number from 0 to 2"),
        ({"seed": 2**63}, "seed", "must be a whole number from 0 to 2"),
        ({"seed": True}, "seed", "must be a whole number from 0 to 2"),
        ({"search_steps": 2}, "search_steps", "needs target data"),
        ({"search_steps": 101, "data": "eurosat_rgb"}, "search_steps", "less than or equal to 100"),
        ({"task": "regression"}, "task", "'classification', 'segmentation' or 'detection'"),
        ({"collection": "s3://bucket"}, "collection", "unknown setting"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_field(settings: dict, field: str, reason: str) -> None:
    with pytest.raises(GeoSANEError, match=rf"GenerateConfig: {field}: .*{reason}"):
        make(GenerateConfig, **{"prompt": "timm:resnet18", **settings})


def test_settings_are_frozen_and_a_change_is_checked_again() -> None:
    config = GenerateConfig(prompt="timm:resnet18", candidates=4, top_k=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    assert dataclasses.replace(config, seed=3).seed == 3
    with pytest.raises(ValueError, match="top_k"):
        dataclasses.replace(config, candidates=1)


def test_json_values_of_the_declared_types_pass() -> None:
    """A request's JSON (whole numbers for a float, strings of the choices) makes the same settings as Python."""
    config = make(GenerateConfig, prompt="timm:resnet18", bandwidth=1, candidates=8, sampling="token", seed=2**63 - 1)
    assert config.bandwidth == 1.0 and isinstance(config.bandwidth, float) and config.seed == 2**63 - 1
