"""The merging baseline: DARE thins task vectors and keeps their expectation, task arithmetic adds them onto the
checkpoint the anchors started from, and ``merged`` chooses its drop rate and scaling on the selection split."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.bench.merging import DROP_RATES, SCALINGS, dare_merge, merged_baseline
from geosane.collection import Collection, sources
from geosane.config import make
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig, Generator
from geosane.tokenizer import TokenizerConfig


def test_dare_and_task_arithmetic_are_what_they_say() -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(200, 50), "n": torch.tensor(1)}
    models = [
        {"w": base["w"] + torch.randn(200, 50), "n": torch.tensor(i), "head": torch.full((3,), float(i))}
        for i in (2, 4)
    ]
    vectors = [m["w"] - base["w"] for m in models]
    mean = dare_merge(base, models, 0.0, "mean", torch.Generator())
    assert torch.allclose(mean["w"], base["w"] + (vectors[0] + vectors[1]) / 2, atol=1e-6)
    total = dare_merge(base, models, 0.0, "sum", torch.Generator())
    assert torch.allclose(total["w"], base["w"] + vectors[0] + vectors[1], atol=1e-6)
    assert torch.equal(mean["head"], torch.full((3,), 3.0)) and mean["n"] == 2  # no base head: the mean; ints: first
    thinned = dare_merge(base, models[:1], 0.9, "sum", torch.Generator().manual_seed(1))["w"] - base["w"]
    kept = thinned.abs() > 1e-6
    assert 0.07 < float(kept.float().mean()) < 0.13  # about 10% of the entries survive ...
    assert torch.allclose(thinned[kept], vectors[0][kept] * 10, rtol=1e-4, atol=1e-5)  # ... rescaled by 1 / (1 - p)
    assert abs(float(thinned.sum() - vectors[0].sum())) < 0.15 * float(vectors[0].abs().sum())  # expectation kept


def test_merged_starts_from_the_anchors_checkpoint_and_chooses_on_selection(tmp_path: Path, shared: Path) -> None:
    torch.manual_seed(0)
    start = timm.create_model("test_resnet", num_classes=10).state_dict()
    checkpoint = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.items()}, str(checkpoint))
    found = []
    for seed in (1, 2):  # two "fine-tunings" of one checkpoint
        torch.manual_seed(seed)
        tuned = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in start.items()}
        source = sources.ModelSource(
            name=f"tuned-{seed}", uri=f"memory:{seed}", sha256=sources.content_sha256(tuned), state_dict=tuned,
            family="resnet", task="classification", in_chans=3, num_classes=10,
            tags={"dataset": "eurosat_rgb", "arch": "test_resnet", "started_from": str(checkpoint)},
        )  # fmt: skip
        found.append(source)
    collection = Collection(str(tmp_path / "collection"))
    collection.add(found, TokenizerConfig(token_size=32), progress=False)
    autoencoder = Autoencoder(AutoencoderConfig(token_size=32, window=32))
    settings = {"anchors": "arch=test_resnet", "data": "eurosat_rgb", "seed": 3}
    config = make(GenerateConfig, prompt="timm:test_resnet?num_classes=10", **settings)
    generator = Generator(config, autoencoder, collection.url, str(shared / "data"))
    weights, notes = merged_baseline(generator)
    assert notes["chosen_from"] == len(DROP_RATES) * len(SCALINGS) and str(checkpoint) in notes["source"]
    base, anchors = generator.fit(start, 3)[0], [dict(a.state_dict) for a in generator.anchors]
    made = [
        generator.make_ready(dare_merge(base, anchors, rate, way, torch.Generator().manual_seed(3)))
        for rate in DROP_RATES
        for way in SCALINGS
    ]
    scores = [info["selection_score"] for _, info in made]
    best = made[scores.index(max(scores))][0]  # the first of the best on the selection split
    assert notes["selection"] == max(scores)
    assert all(torch.equal(v, weights[k]) for k, v in best.state_dict().items())
    untagged = Generator(make(GenerateConfig, prompt="timm:test_resnet?num_classes=10"), autoencoder)
    with pytest.raises(GeoSANEError, match="merged needs anchors fine-tuned from one checkpoint"):
        merged_baseline(untagged)
