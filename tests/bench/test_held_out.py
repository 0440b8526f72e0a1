"""Held-out checks: a collection that saw a task's test images makes the bench refuse to call the task held out."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.bench import (
    BenchConfig,
    BenchTask,
    held_out_problems,
)
from geosane.collection import Collection, sources
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from .conftest import record


def test_a_collection_that_saw_a_tasks_test_images_is_not_held_out(data_root: str) -> None:
    ms = BenchTask(data="eurosat_ms", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01)
    # EuroSAT RGB and multispectral files are the same patches: an RGB zoo that trained on the multispectral test
    # patches' RGB versions saw them
    problems, unknown = held_out_problems([record("rgb", dataset="eurosat_rgb")], ms, data_root)
    assert len(problems) == 1 and "rgb trained on eurosat_rgb" in problems[0] and "eurosat/" in problems[0]
    assert unknown == []
    kept_apart = record("rgb-excluded", dataset="eurosat_rgb", exclude="eurosat_ms", train_limit="2000")
    assert held_out_problems([kept_apart, record("pretrained")], ms, data_root) == ([], ["pretrained"])
    # the same dataset is never held out
    rgb = BenchTask(data="eurosat_rgb", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01)
    assert held_out_problems([kept_apart], rgb, data_root)[0]
    # cloud masks: a model that trained on every sensor saw Landsat 5; one that held Landsat 5 out did not, and
    # a model that held out another sensor saw it
    clouds = BenchTask(
        data="cloudmask?holdout=landsat5", arch="test_resnet", initializations=["scratch"], epochs=1, lr=1
    )
    assert held_out_problems([record("all", dataset="cloudmask")], clouds, data_root)[0]
    assert held_out_problems([record("l5", dataset="cloudmask?holdout=landsat5")], clouds, data_root)[0] == []
    assert held_out_problems([record("s2", dataset="cloudmask?holdout=sentinel2")], clouds, data_root)[0]


def test_the_bench_refuses_to_call_a_seen_task_held_out(workspace: dict[str, str], tmp_path: Path) -> None:
    from geosane.bench import check_held_out, collection_of

    leaky = str(tmp_path / "leaky")
    source = sources.load("timm:test_resnet?num_classes=10&seed=5")
    source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet"}  # all of the RGB train split
    Collection(leaky).add([source], TokenizerConfig(token_size=32), progress=False)
    task = BenchTask(
        data="eurosat_ms", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01, held_out=True
    )
    config = BenchConfig(name="x", autoencoder=workspace["autoencoder"], collection=leaky, tasks=[task])
    with pytest.raises(GeoSANEError, match="eurosat_ms is marked held_out, but 1 collection model"):
        check_held_out(config, collection_of(config))
    config.collection = workspace["collection"]  # the zoo-like collection excluded those patches
    checked = check_held_out(config, collection_of(config))
    assert checked["eurosat_ms"]["checked_models"] == 4
