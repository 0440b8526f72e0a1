"""The generator: every prompt architecture loads strictly and runs, the seed decides the weights, candidates run
as Ray tasks with the same weights, segmentation and detection backbones plug into task models, encoded anchors are
reused across generations, and bad input fails before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import geosane
from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.collection import Collection, sources
from geosane.config import make
from geosane.errors import GeoSANEError
from geosane.generation import RANKINGS, AnchorCache, GenerateConfig, Generator

PROMPTS = ["vit_small_patch16_224", "swin_tiny_patch4_window7_224", "resnet18", "mobilenetv3_large_100"]


@pytest.mark.parametrize("in_chans", [3, 13])
@pytest.mark.parametrize("arch", PROMPTS)
def test_generated_prompts_load_strictly_and_run(autoencoder: str, arch: str, in_chans: int) -> None:
    (generated,) = geosane.generate(autoencoder, f"timm:{arch}?in_chans={in_chans}&num_classes=10", candidates=1)
    fresh = timm.create_model(arch, in_chans=in_chans, num_classes=10)
    fresh.load_state_dict(generated.state_dict, strict=True)
    # the decoded weights replaced the prompt's: not one tokenized tensor is the prompt's random initialization
    prompt = sources.load(f"timm:{arch}?in_chans={in_chans}&num_classes=10&seed=0").state_dict
    conv = next(k for k, v in prompt.items() if v.dim() == 4 or k.endswith("qkv.weight"))
    assert not torch.equal(generated.state_dict[conv], prompt[conv])
    with torch.no_grad():
        out = generated.model(torch.randn(2, in_chans, 224, 224))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert generated.card.prompt.arch == arch and generated.card.prompt.in_chans == in_chans


def test_the_seed_decides_the_weights(autoencoder: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        (generated,) = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", seed=seed, bandwidth=0.5)
        return generated.state_dict

    first, again, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_token_sampling_across_lineages_warns(
    autoencoder: str, collection: Collection, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens of independently trained models do not line up (such mixes score near chance): mixing anchors of two
    lineages says so in the log; one anchor, or joint sampling, does not."""
    settings = {"anchors": "dataset=eurosat_rgb", "collection": collection.url, "candidates": 1}
    with caplog.at_level("WARNING", logger="geosane.generation.generator"):
        geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", sampling="token", **settings)
    assert "token sampling mixes 2 anchors of 2 lineages" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geosane.generation.generator"):
        geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
        geosane.generate(
            autoencoder, "timm:test_resnet?num_classes=10", sampling="token", **{**settings, "anchors": "seed=0"}
        )
    assert "mixes" not in caplog.text


def test_bad_input_is_refused_before_anything_is_written(
    autoencoder: str, collection: Collection, tmp_path: Path, shared: Path
) -> None:
    with pytest.raises(GeoSANEError, match="unknown timm model 'resnet_nonexistent'"):
        geosane.generate(autoencoder, "timm:resnet_nonexistent")
    with pytest.raises(GeoSANEError, match=r"does not fit|fits the prompt"):
        geosane.generate(autoencoder, "timm:resnet18", anchors="dataset=eurosat_rgb", collection=collection.url)
    with pytest.raises(GeoSANEError, match=r"no model .* matches \{'dataset': 'bigearthnet'\}.*eurosat_rgb"):
        geosane.generate(autoencoder, "timm:test_resnet", anchors="dataset=bigearthnet", collection=collection.url)
    data = str(shared / "data")
    with pytest.raises(GeoSANEError, match="eurosat_rgb has 3 bands, the prompt test_resnet takes in_chans=13"):
        geosane.generate(autoencoder, "timm:test_resnet?in_chans=13", data="eurosat_rgb", data_root=data)
    with pytest.raises(GeoSANEError, match="eurosat_rgb has 10 classes, the prompt test_resnet num_classes=1000"):
        geosane.generate(autoencoder, "timm:test_resnet", data="eurosat_rgb", data_root=data)
    other = str(tmp_path / "ae64")
    Autoencoder(AutoencoderConfig(token_size=64, window=32)).save(other)
    with pytest.raises(GeoSANEError, match=r"tokens of size 64 \(dense\), the collection .* holds tokens of size 230"):
        geosane.generate(other, "timm:test_resnet", anchors="dataset=eurosat_rgb", collection=collection.url)


@pytest.mark.parametrize(
    ("task", "dataset", "in_chans"), [("segmentation", "cloudmask", 6), ("detection", "neon_trees", 3)]
)
def test_generated_backbones_plug_into_task_models_on_real_data(
    autoencoder: str, task: str, dataset: str, in_chans: int, shared: Path
) -> None:
    """The generated backbone under a new task head; BatchNorm re-estimated on the target's real images (NEON's come
    in different sizes); segmentation and detection candidates rank by a per-pixel nearest-class-mean mIoU on the
    selection split (detection: its boxes filled, on chips), and the card says so."""
    data = geosane.datasets.get(dataset, str(shared / "data"))
    (generated,) = geosane.generate(
        autoencoder, f"timm:test_resnet?in_chans={in_chans}", task=task, data=dataset, data_root=str(shared / "data")
    )
    card = generated.card
    assert card.task == task and card.batchnorm is not None and card.selection is not None
    assert card.selection.ranked_by == RANKINGS[task] and 0 < card.selection.score <= 1
    model = generated.model
    assert model.training is False
    samples = data.load("test", limit=1)
    with torch.no_grad():
        if task == "segmentation":
            out = model(samples.x)
            assert out.shape == (1, data.num_classes, *samples.x.shape[-2:]) and torch.isfinite(out).all()
        else:
            (detections,) = model([samples.x[0]])
            assert set(detections) == {"boxes", "labels", "scores"} and torch.isfinite(detections["boxes"]).all()
    # the generated backbone weights are in the task model, and its BatchNorm statistics are the target's
    prompt = timm.create_model("test_resnet", in_chans=in_chans)
    backbone = model.backbone
    assert not torch.equal(backbone.state_dict()["conv1.0.weight"], prompt.state_dict()["conv1.0.weight"])
    assert not torch.equal(backbone.state_dict()["bn1.running_var"], prompt.state_dict()["bn1.running_var"])


def test_candidates_run_as_ray_tasks_with_the_same_weights(autoencoder: str) -> None:
    """With a Ray cluster up, candidates are Ray tasks; seeded per candidate, they come out as in one process."""
    import ray

    settings = {"candidates": 3, "top_k": 3, "seed": 5, "bandwidth": 0.3}
    local = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
    finally:
        ray.shutdown()
    assert {g.card.generated_by for g in local} == {"this process"}
    assert {g.card.generated_by for g in remote} == {"Ray tasks"}
    for one, other in zip(local, remote, strict=True):
        assert one.card.candidate == other.card.candidate
        assert all(torch.equal(one.state_dict[k], other.state_dict[k]) for k in one.state_dict)


def test_a_cache_keeps_encoded_anchors_for_the_next_generation(autoencoder: str, collection: Collection) -> None:
    """A second generation of the same prompt, anchors and seed finds its anchors fitted and encoded; another
    bandwidth still reuses them, another seed does not; the least recently used entry goes first."""
    cache = AnchorCache(maxsize=1)
    loaded = Autoencoder.load(autoencoder)

    def run(**settings) -> Generator:
        config = make(GenerateConfig, prompt="timm:test_resnet?num_classes=10", anchors="seed=0", **settings)
        generator = Generator(config, loaded, collection.url, cache=cache)
        generator.generate()
        return generator

    first = run(seed=1)
    second = run(seed=1, bandwidth=0.5)
    assert not first.cache_hit and second.cache_hit and second.encoded is first.encoded and first.encoded
    assert not run(seed=2).cache_hit and not run(seed=1).cache_hit and len(cache) == 1


def test_a_generation_makes_its_candidates_from_public_steps(autoencoder: str, collection: Collection) -> None:
    """``generate`` is ``candidates`` ranked and cut to ``top_k``: the steps a bench baseline calls give the same
    models."""
    config = make(
        GenerateConfig,
        prompt="timm:test_resnet?num_classes=10",
        anchors="dataset=eurosat_rgb",
        candidates=3,
        top_k=3,
        seed=6,
    )
    loaded = Autoencoder.load(autoencoder)
    generated = Generator(config, loaded, collection.url).generate()
    again, executor = Generator(config, loaded, collection.url).candidates()
    assert executor == "this process" and [g.card.candidate for g in generated] == [0, 1, 2]
    for model, info in again:
        card = generated[info["candidate"]].card
        assert card.anchor == info["anchor"] and card.distance_to_anchor == info["distance"]
        assert all(torch.equal(v, generated[info["candidate"]].state_dict[k]) for k, v in model.state_dict().items())
