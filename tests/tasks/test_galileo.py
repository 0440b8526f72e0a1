"""Galileo nano, our implementation: the released encoder loads strictly, reproduces the official implementation's
tokens and pooled output on its three reference cases (patch-size resizing, 20 m inputs, two time steps and months,
absent groups) to 1e-4, treats an absent token as removed, and its features are worth more than a random
encoder's to a linear probe on real images it never saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geosane.bench.foundation import galileo_classifier
from geosane.errors import GeoSANEError
from geosane.tasks import load_task
from geosane.tasks.galileo import SPACE_TIME_BANDS, GalileoEncoder, band_groups
from geosane.tasks.probes import probe_scores

CASES = ["rgb_16px_patch8", "s2_all_16px_patch4", "s2_all_24px_patch8_res20_2steps"]


@pytest.fixture(scope="module")
def released(shared: Path) -> GalileoEncoder:
    weights = torch.load(shared / "weights/galileo_nano/encoder.pt", map_location="cpu", weights_only=True)
    encoder = GalileoEncoder()
    encoder.load_state_dict(weights, strict=True)  # every tensor, every shape, nothing left over
    assert sum(p.numel() for p in encoder.parameters()) == sum(v.numel() for v in weights.values())
    return encoder.eval()


@pytest.fixture(scope="module")
def reference(shared: Path) -> dict:
    """The official implementation's outputs (``../shared/fixtures/README.md``), read without unpickling code."""
    fixture = torch.load(shared.parent / "shared/fixtures/galileo_nano_reference.pt", weights_only=True)
    assert tuple(fixture["band_order"]["space_time"]) == tuple(b.replace("B0", "B") for b in SPACE_TIME_BANDS)
    return {case["name"]: case for case in fixture["cases"]}


@pytest.mark.parametrize("name", CASES)
def test_the_encoder_matches_the_official_implementation(name, released, reference) -> None:
    case = reference[name]
    inputs = case["inputs"]
    with torch.no_grad():
        tokens, present = released(
            inputs["s_t_x"], inputs["s_t_m"] == 0, inputs["months"], case["patch_size"], case["input_resolution_m"]
        )
    assert torch.equal(present, case["s_t_mask"] == 0)
    assert tokens.shape == case["s_t_tokens"].shape
    assert (tokens - case["s_t_tokens"]).abs().max() < 1e-4  # absent tokens too: the norm of zero, as there
    assert (GalileoEncoder.pooled(tokens, present) - case["pooled"]).abs().max() < 1e-4


def test_an_absent_token_takes_no_part(released, reference) -> None:
    """Two images in one batch with different groups present encode as each does alone."""
    inputs = reference["s2_all_16px_patch4"]["inputs"]
    present = inputs["s_t_m"] == 0
    present[1, ..., 2:6] = False  # the second image has S2 RGB only
    with torch.no_grad():
        together, _ = released(inputs["s_t_x"], present, inputs["months"], 4)
        alone = [
            released(inputs["s_t_x"][i : i + 1], present[i : i + 1], inputs["months"][i : i + 1], 4)[0] for i in (0, 1)
        ]
    assert (together - torch.cat(alone)).abs().max() < 1e-5


def test_bands_go_to_galileos_groups_by_name() -> None:
    assert band_groups(["B04", "B03", "B02"]) == {"S2_RGB": [2, 1, 0]}
    ms = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    assert band_groups(ms) == {
        "S2_RGB": [1, 2, 3], "S2_Red_Edge": [4, 5, 6], "S2_NIR_10m": [7], "S2_NIR_20m": [12], "S2_SWIR": [10, 11],
    }  # fmt: skip
    with pytest.raises(GeoSANEError, match="Galileo needs Sentinel-2 bands by name"):
        band_groups(["Blue", "Green", "Red"])


def test_multispectral_inputs_get_galileos_own_statistics(shared: Path) -> None:
    """EuroSAT-MS holds Sentinel-2 digital numbers: a band standardized by the task's statistics is mapped to
    Galileo's (raw value, then Galileo's mean and std), checked on one band by hand."""
    import json

    data = load_task("eurosat_ms", str(shared / "data"), train_limit=20, selection_limit=10, test_limit=10)
    model = galileo_classifier(data, 0, str(shared / "data"), pretrained=False)
    stats = json.loads((shared / "weights/galileo_nano/normalization.json").read_text())["13"]
    b04 = SPACE_TIME_BANDS.index("B04")
    raw = (
        data.train[0][0, data.bands.index("B04")] * data.statistics[1][data.bands.index("B04")]
        + data.statistics[0][data.bands.index("B04")]
    )
    expected = (raw - stats["mean"][b04]) / stats["std"][b04]
    got = data.train[0][0, data.bands.index("B04")] * model.scale[b04] + model.shift[b04]
    assert torch.allclose(got, expected, atol=1e-4)
    rgb = load_task("eurosat_rgb?classes=5-9", str(shared / "data"), train_limit=20, selection_limit=10, test_limit=10)
    assert bool((galileo_classifier(rgb, 0, str(shared / "data"), pretrained=False).scale == 1).all())  # 8-bit


def test_a_linear_probe_on_galileo_beats_one_on_random_weights(shared: Path) -> None:
    """On the five EuroSAT classes our zoo never trained on (300 train, 300 test patches); measured 0.92 against
    0.83 (benchmarks/galileo_probe.py has the whole test split)."""
    data = load_task("eurosat_rgb?classes=5-9", str(shared / "data"), train_limit=300, test_limit=300)
    scores = {
        pretrained: probe_scores(galileo_classifier(data, 0, str(shared / "data"), pretrained), data, 0)
        for pretrained in (True, False)
    }
    assert scores[True]["linear_probe"] > scores[False]["linear_probe"] + 0.04, scores
