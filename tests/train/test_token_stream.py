"""The Ray Data side of training: model-level splits and pass sizes (windows themselves: test_views.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from geosane.collection import Collection, ModelRecord, sources
from geosane.errors import GeoSANEError
from geosane.scale import Scale
from geosane.tokenizer import TokenizerConfig
from geosane.train import lineage, split_models, window_dataset, windows_per_model_for
from geosane.views import ViewConfig, windows_per_pass


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    collection = Collection(str(tmp_path_factory.mktemp("collection")))
    models = [f"timm:{arch}?num_classes=10" for arch in ("test_resnet", "test_vit", "test_efficientnet")]
    collection.add((sources.load(m) for m in models), TokenizerConfig(token_size=64), progress=False)
    return collection


def record(model_id: str, **tags: str) -> ModelRecord:
    return ModelRecord(
        model_id, model_id, "", "", "resnet", "classification", "rgb", None, 3, 10, 1, 1, 64, "dense", "MIT", tags
    )


def test_held_out_lineages_are_whole_and_seeded() -> None:
    """Every checkpoint of a zoo trial lands on one side: training on epoch 2 and validating on epoch 3 of the same
    trial would measure memory."""
    records = [
        record(f"m{seed}e{epoch}", zoo="z", dataset="eurosat_rgb", arch="test_resnet", seed=str(seed), epoch=str(epoch))
        for seed in range(10)
        for epoch in (2, 3)
    ] + [record("presto")]
    split = split_models(records, 0.2, seed=0)
    assert set(split.train) | set(split.val) == {r.id for r in records} and not set(split.train) & set(split.val)
    assert len(split.val_lineages) == 2  # 20% of 11 lineages
    for seed in range(10):  # both checkpoints of a trial on one side
        assert (f"m{seed}e2" in split.val) == (f"m{seed}e3" in split.val)
    assert len(split.val) in (3, 4)
    assert split_models(records, 0.2, seed=0) == split and split_models(records, 0.2, seed=1) != split
    assert lineage(record("x", lineage="mine")) == "mine" and lineage(record("y")) == "y"
    with pytest.raises(GeoSANEError, match="at least 2 lineages"):
        split_models(records[:2], 0.2, seed=0)


def test_holdout_rules_keep_whole_families_out_of_training_and_validation() -> None:
    records = [
        record(f"{arch}{seed}", zoo="z", dataset="eurosat_rgb", arch=arch, seed=str(seed), epoch="2")
        for arch in ("test_resnet", "test_vit")
        for seed in range(5)
    ]
    records = [replace(r, family="vision_transformer") if r.tags["arch"] == "test_vit" else r for r in records]
    split = split_models(records, 0.2, seed=0, holdout={"family": ["vision_transformer"]})
    assert split.held_out == [f"test_vit{s}" for s in range(5)]
    assert set(split.train) | set(split.val) == {f"test_resnet{s}" for s in range(5)} and split.val
    assert split_models(records, 0.2, 0, {"arch": ["test_resnet"]}).held_out == [f"test_resnet{s}" for s in range(5)]
    with pytest.raises(GeoSANEError, match="holdout: unknown field 'familly'"):
        split_models(records, 0.2, 0, {"familly": ["vision_transformer"]})
    with pytest.raises(GeoSANEError, match="holdout: no model has family 'convnext'; the collection has"):
        split_models(records, 0.2, 0, {"family": ["convnext"]})


def test_small_collections_draw_longer_passes(collection: Collection) -> None:
    ids = [r.id for r in collection.records()]
    views = ViewConfig(window=16)
    one_pass = sum(windows_per_pass(r.num_tokens, views) for r in collection.records())
    assert windows_per_model_for(collection.url, ids, views, one_pass // 2) == 1.0  # already long enough
    scale = windows_per_model_for(collection.url, ids, views, 10 * one_pass)
    assert scale == pytest.approx(10, rel=0.01)
    longer = ViewConfig(window=16, windows_per_model=scale)
    assert sum(windows_per_pass(r.num_tokens, longer) for r in collection.records()) >= 10 * one_pass * 0.99


def test_large_models_draw_capped_windows() -> None:
    """Windows follow a model's length up to a cap: a U-Net 60 times a zoo model's size draws a few times its
    windows, not 60 times (sampling per model rather than per token once models are large)."""
    views = ViewConfig(window=64, max_windows_per_model=256)
    zoo_model, unet = 10_000, 610_000  # tokens of a 0.3M- and a 19.5M-parameter model at 32 values per token
    assert windows_per_pass(zoo_model, views) == round(zoo_model / 64)
    assert windows_per_pass(unet, views) == 256
    assert windows_per_pass(unet, ViewConfig(window=64, max_windows_per_model=256, windows_per_model=2.0)) == 512


def test_ray_data_passes_permuted_twins(collection: Collection) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        vit = next(r for r in collection.records() if r.name == "test_vit")
        views = ViewConfig(window=vit.num_tokens, noise=0.0)  # one window: the whole model
        plain = window_dataset(collection.url, [vit.id], views).take_all()
        twin = window_dataset(collection.url, [vit.id], replace(views, permute_hidden_units=True)).take_all()
        # a second writer committed the same model at the same time: training still reads it once
        version = collection.version
        copy = collection.dataset().to_table(filter=f"id = '{vit.id}'").to_batches()[0]
        collection._append(iter([copy]), "added", [vit])
        assert collection.dataset().count_rows() == 4 and len(collection.records()) == 3
        again = window_dataset(collection.url, [vit.id], views).take_all()
        before = window_dataset(collection.url, [vit.id], views, version=version).take_all()
    finally:
        ray.shutdown()
    assert len(again) == len(before) == 1
    tokens = collection.tokens(vit.id)
    original = tokens.tokens.numpy()
    assert np.array_equal(plain[0]["tokens"], original)
    # each window carries its model's scale as the collection stored it, which is the rule applied to its tokens
    scale = Scale.of(tokens.tokens, tokens.valid)
    assert (vit.token_mean, vit.token_std) == (float(scale.mean), float(scale.std))
    assert (plain[0]["mean"], plain[0]["std"]) == (np.float32(scale.mean), np.float32(scale.std))
    assert not np.array_equal(twin[0]["tokens"], original)  # the layouts reached Ray Data's tasks
    assert np.array_equal(np.sort(twin[0]["tokens"], axis=None), np.sort(original, axis=None))
