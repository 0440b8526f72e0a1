"""The zoo end to end on a tiny config: Ray Tune trains real models on real data into a collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane import datasets
from geosane.collection import Collection
from geosane.errors import GeoSANEError
from geosane.tasks import create_model, score_samples
from geosane.zoo import ZooConfig, run_zoo

CONFIG = Path(__file__).parents[1] / "sweeps" / "zoo-tiny.yaml"


def test_tiny_zoo_fills_a_collection_whose_checkpoints_evaluate_to_their_metric(
    ray_session, tmp_path: Path, shared: Path
) -> None:
    config = ZooConfig.from_yaml(CONFIG)
    out, storage = str(tmp_path / "collection"), str(tmp_path / "runs")
    added = run_zoo(config, out, storage, str(shared / "data"), progress=False)
    # one ResNet for one epoch on EuroSAT RGB, one for two epochs on cloud masks (Landsat 5 held out): 3 checkpoints
    assert len(added) == 3
    by_task = {r.task for r in added}
    assert by_task == {"classification", "segmentation"} and {r.modality for r in added} == {"rgb", "multispectral"}
    collection = Collection(out)
    for record in collection.records():
        group = next(g for g in config.groups if g.dataset == record.tags["dataset"])
        dataset = datasets.get(group.dataset, str(shared / "data"))
        test = dataset.load("test", limit=group.test_limit)
        model = create_model(record.tags["arch"], record.task, record.in_chans, record.num_classes, test.x.shape[-1])
        model.load_state_dict(collection.export(record.id))
        metric = "test_accuracy" if record.task == "classification" else "test_miou"
        assert score_samples(model, record.task, test.x, test.y, record.num_classes) == pytest.approx(
            record.metrics[metric], abs=1e-6
        )
        assert record.metrics["test_samples"] == len(test) and record.bands == list(dataset.bands)
    # re-running the same zoo restores Tune's experiment and adds nothing new
    assert run_zoo(config, out, storage, str(shared / "data"), progress=False) == []


def test_zoo_configs_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngroups: []\nsearch:\n  lr: {eval: '__import__(\"os\")'}\n")
    with pytest.raises(GeoSANEError, match="search.lr must be a value or one of"):
        ZooConfig.from_yaml(bad)
    bad.write_text(
        "name: x\ngroups:\n  - {dataset: eurosat_rgb, architectures: [test_vit], trials: 1, epochs: 1, colour: red}\n"
    )
    with pytest.raises(GeoSANEError, match=r"line 3: groups\[0\].colour: unknown setting"):
        ZooConfig.from_yaml(bad)
    ok = ZooConfig.from_yaml(Path(__file__).parents[1] / "sweeps" / "zoo-small.yaml")
    for group in ok.groups:
        trials = ok.trials(group)
        assert len(trials) == group.trials and {t["arch"] for t in trials} == set(group.architectures)
        assert sorted(t["seed"] for t in trials) == list(range(ok.seed, ok.seed + group.trials))


def test_a_group_never_trains_on_the_images_it_excludes(shared: Path) -> None:
    from geosane.datasets import training_ids

    root = str(shared / "data")
    rgb_train = datasets.get("eurosat_rgb", root).splits()["train"]
    multispectral = {i for s in ("train", "selection", "test") for i in datasets.get("eurosat_ms", root).splits()[s]}
    kept = training_ids("eurosat_rgb", ["eurosat_ms"], root)
    # the RGB versions of the multispectral patches in the train split are left out, and nothing else
    assert set(rgb_train) - set(kept) == set(rgb_train) & multispectral != set()
    assert training_ids("eurosat_rgb", [], root, limit=100) == datasets.get("eurosat_rgb", root).load_ids("train", 100)


def test_epochs_drawn_per_lineage_keep_two_checkpoints() -> None:
    """Where the search draws ``epochs``, a lineage trains that many (at most the group's), and a checkpoint past
    its end moves to its last epoch; without a draw the group's epochs and checkpoints stand."""
    from geosane.zoo import member_epochs

    member = {"epochs": 4, "checkpoint_epochs": [2, 4]}
    assert member_epochs({"epochs": 3}, member) == (3, [2, 3])
    assert member_epochs({"epochs": 4}, member) == (4, [2, 4]) == member_epochs({}, member)
    assert member_epochs({"epochs": 9}, member) == (4, [2, 4])
    finetune = ZooConfig.from_yaml(Path(__file__).parents[1] / "sweeps" / "zoo-finetune.yaml")
    lineages = sum(g.trials for g in finetune.groups)
    assert lineages >= 24 and all(g.start_from for g in finetune.groups)
    for group in finetune.groups:
        drawn = {**finetune.search, **group.search}["epochs"]["choice"]
        for epochs in drawn:  # every drawn count keeps two checkpoints
            assert (
                len(
                    member_epochs(
                        {"epochs": epochs}, {"epochs": group.epochs, "checkpoint_epochs": group.checkpoint_epochs}
                    )[1]
                )
                == 2
            )
