"""What a request may ask for: generation's own settings (every bad field named by pydantic, in the service's 422
form), and only what the service offers (registered datasets and its allow-lists), never a server path, before
anything on the server is looked at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geosane.config import make
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig
from geosane.serve import ServeConfig, admitted

REQUEST = {"prompt": "timm:test_resnet?num_classes=5", "candidates": 2, "seed": 3}
SERVICE = ServeConfig()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**REQUEST, "bandwidth": -1}, "bandwidth"),
        ({**REQUEST, "bandwidth": "wide"}, "bandwidth"),
        ({**REQUEST, "candidates": 10_000}, "candidates"),
        ({**REQUEST, "sampling": "nearest"}, "sampling"),
        ({**REQUEST, "bandwidth": None}, "bandwidth"),
        ({**REQUEST, "seed": True}, "seed"),
        ({**REQUEST, "seed": 2**70}, "seed"),
        ({**REQUEST, "seed": -1}, "seed"),
        ({**REQUEST, "colour": "red"}, "colour"),
        ({**REQUEST, "collection": "/srv/collection"}, "collection"),
        ({**REQUEST, "data_root": "/srv"}, "data_root"),
        ({"seed": 1}, "prompt"),
        ({**REQUEST, "prompt": "/srv/model.safetensors"}, "prompt"),
    ],
)
def test_a_bad_request_is_refused_naming_its_field(body, field) -> None:
    """Settings are checked by their class (the request body *is* GenerateConfig): the error names the field."""
    with pytest.raises(GeoSANEError, match=rf"GenerateConfig: {field}: "):
        make(GenerateConfig, **body)


def test_a_prompt_that_timm_lacks_or_a_latent_search_is_not_offered() -> None:
    status, answer = admitted(make(GenerateConfig, **{**REQUEST, "prompt": "timm:no_such_net"}), SERVICE)
    assert status == 422 and answer["field"] == "prompt" and "not a timm architecture" in answer["reason"]
    searching = make(GenerateConfig, **{**REQUEST, "data": "eurosat_rgb", "search_steps": 2})
    assert admitted(searching, SERVICE)[1]["field"] == "search_steps"
    assert admitted(make(GenerateConfig, **{**REQUEST, "candidates": 17}), SERVICE)[1]["field"] == "candidates"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**REQUEST, "prompt": "timm:test_resnet?pretrained=/etc/hostname"}, "prompt"),
        ({**REQUEST, "prompt": "timm:test_resnet?pretrained=/no/such/file.safetensors"}, "prompt"),
        ({**REQUEST, "prompt": "timm:test_resnet?num_classes=../../etc"}, "prompt"),
        ({**REQUEST, "prompt": "timm:test_resnet?seed=2"}, "prompt"),
        ({**REQUEST, "data": "imagefolder:/etc"}, "data"),
        ({**REQUEST, "data": "imagefolder:/no/such/folder"}, "data"),
        ({**REQUEST, "data": "npz:/etc/hostname"}, "data"),
        ({**REQUEST, "data": "npz:/no/such/file.npz"}, "data"),
        ({**REQUEST, "data": "/etc"}, "data"),
        ({**REQUEST, "data": "eurosat_rgb?download=true"}, "data"),
        ({**REQUEST, "data": "eurosat_rgb?classes=/etc/x"}, "data"),
        ({**REQUEST, "prompt_weights": "/etc/hostname"}, "prompt_weights"),
    ],
)
def test_a_request_naming_a_server_path_is_refused_without_a_look(body, field) -> None:
    """Whether the path exists or not, the answer is the same 422, and it tells nothing of the server's files."""
    status, answer = admitted(make(GenerateConfig, **body), SERVICE)
    assert status == 422 and answer["field"] == field
    assert "hostname" not in answer["reason"] and "not found" not in answer["reason"]
    assert "passwd" not in answer["reason"] and "ssl" not in answer["reason"]  # no listing of /etc


def test_offered_names_stand_for_what_the_service_was_started_with(tmp_path: Path) -> None:
    np.savez(tmp_path / "mine.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, np.int64))
    config = ServeConfig(data=(f"mine=npz:{tmp_path / 'mine.npz'}",), prompt_weights=("imagenet=/srv/w.safetensors",))
    settings = admitted(make(GenerateConfig, **{**REQUEST, "data": "mine", "prompt_weights": "imagenet"}), config)
    assert settings.data == f"npz:{tmp_path / 'mine.npz'}" and settings.prompt_weights == "/srv/w.safetensors"
    registered = admitted(make(GenerateConfig, **{**REQUEST, "data": "eurosat_rgb?classes=5-9"}), config)
    assert registered.data == "eurosat_rgb?classes=5-9" and registered.prompt_weights is None
    status, answer = admitted(make(GenerateConfig, **{**REQUEST, "prompt_weights": "other"}), config)
    assert status == 422 and "imagenet" in answer["reason"]


def test_a_good_request_becomes_the_generation_settings() -> None:
    request = make(GenerateConfig, **{**REQUEST, "bandwidth": 0})  # an integer where a number is asked
    config = admitted(request, SERVICE)
    assert config == request and config.bandwidth == 0.0 and config.candidates == 2


@pytest.mark.parametrize("entry", ["mine", "=npz:/x", "a b=npz:/x"])
def test_an_allow_list_entry_must_be_name_equals_value(entry) -> None:
    with pytest.raises(GeoSANEError, match="NAME=VALUE"):
        ServeConfig(data=(entry,)).offered("data")


def test_the_allow_lists_are_checked_when_the_service_starts(tmp_path: Path) -> None:
    """Files are made absolute and read safely, catalogued weights stay names, and user data must be user data."""
    from geosane.serve import resolved

    np.savez(tmp_path / "mine.npz", x=np.zeros((8, 3, 8, 8), np.float32), y=np.arange(8) % 2)
    config = resolved(
        ServeConfig(
            storage=str(tmp_path / "jobs"),
            data=(f"mine=npz:{tmp_path / 'mine.npz'}",),
            prompt_weights=("imagenet=pretrained:efficientnet_lite0",),
        )
    )
    assert config.prompt_weights == ("imagenet=pretrained:efficientnet_lite0",)
    settings = admitted(make(GenerateConfig, **{**REQUEST, "prompt_weights": "imagenet", "data": "mine"}), config)
    assert (
        settings.prompt_weights == "pretrained:efficientnet_lite0" and settings.data == f"npz:{tmp_path / 'mine.npz'}"
    )
    with pytest.raises(GeoSANEError, match="expected npz:PATH or imagefolder:DIR"):
        resolved(ServeConfig(storage=str(tmp_path / "jobs"), data=("rgb=eurosat_rgb",)))
