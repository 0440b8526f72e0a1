"""The baselines that separate the latent space from copying: noise and soups are what they say, and the
anchor-based ones share generation's anchors and treatment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geosane.bench import (
    TrialContext,
    build_initial_model,
)

from .conftest import TASKS, config_for


def test_noise_and_soup_are_what_they_say() -> None:
    from geosane.bench.ablations import noise_like, soup_of
    from geosane.tasks import weight_distance

    torch.manual_seed(0)
    weights = {"a": torch.randn(8, 4), "b": torch.randn(16), "n": torch.tensor(3)}
    noised = noise_like(weights, {"a": 0.1, "b": 0.02}, torch.Generator().manual_seed(1))
    for key, distance in {"a": 0.1, "b": 0.02}.items():  # each tensor at exactly its relative distance
        assert weight_distance({key: noised[key]}, {key: weights[key]}) == pytest.approx(distance, rel=1e-5)
    assert torch.equal(noised["n"], weights["n"])
    other = {"a": torch.zeros(8, 4), "b": torch.ones(16), "n": torch.tensor(5)}
    soup = soup_of([weights, other])
    assert torch.allclose(soup["a"], weights["a"] / 2) and torch.allclose(soup["b"], (weights["b"] + 1) / 2)
    assert soup["n"] == 3  # integer buffers: the first's


def test_anchor_based_baselines_share_generations_anchors_and_treatment(
    workspace: dict[str, str], data_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``anchor`` is the selection-best anchor; ``decoded`` is it through the autoencoder; ``noised`` moves every
    tensor of it as far (relative) as the trial's generated model moved from its own anchor; the head rule keeps
    the EuroSAT RGB classifiers' heads for EuroSAT-MS (the same ten classes by name)."""
    from geosane.bench import ablations, load_task
    from geosane.bench.ablations import best_anchor, generated_distances
    from geosane.tasks import weight_distance

    monkeypatch.setattr(ablations, "CHOICES", tmp_path / "choices")
    spec = TASKS["eurosat_ms"]
    config = config_for(workspace, data_root, [spec])
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config, spec, data, seed=1, lr=spec.lrs[0], collection=workspace["collection"])
    generator = context.generator()
    assert generator.head_kept and len(generator.anchors) == 2
    scores = [generator.make_ready(a.state_dict)[1]["selection_score"] for a in generator.anchors]
    index, _, info = best_anchor(generator)
    assert info["selection_score"] == max(scores) and scores[index] == max(scores)
    (remembered,) = (tmp_path / "choices").glob("*.json")  # the other seeds read the choice instead of scoring again
    assert json.loads(remembered.read_text())["best"] == index

    model, notes = build_initial_model("anchor", context)
    best = generator.anchors[index].state_dict
    weights = {k: v for k, v in best.items() if "running" not in k and "num_batches" not in k}  # BatchNorm re-estimated
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert notes["distance"] == 0.0

    distances, _, _ = generated_distances(generator)
    model, notes = build_initial_model("noised", context)
    mine = model.state_dict()
    for key, distance in distances.items():
        assert weight_distance({key: mine[key]}, {key: best[key]}) == pytest.approx(distance, rel=1e-4)
    assert "per-tensor distance" in notes["source"] and notes["distance"] > 0

    model, notes = build_initial_model("decoded", context)
    assert 0 < notes["distance"] < 10 and "encoded and decoded" in notes["source"]
