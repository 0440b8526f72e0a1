"""Every registered dataset, on the real data in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geosane import datasets
from geosane.datasets.base import SPLITS
from geosane.errors import GeoSANEError

EXPECTED = {
    # name: (task, bands, classes, total samples)
    "eurosat_rgb": ("classification", 3, 10, 27000),
    "eurosat_ms": ("classification", 13, 10, 270),
    "cloudmask": ("segmentation", 6, 3, 3 * 64),
    "sen1floods11": ("segmentation", 2, 2, 64),
    "neon_trees": ("detection", 3, 1, 4),
}


@pytest.fixture(scope="module")
def root(shared: Path) -> Path:
    return shared / "data"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_datasets_load_with_written_down_splits(root: Path, name: str) -> None:
    task, bands, classes, total = EXPECTED[name]
    dataset = datasets.get(name, str(root))
    assert (dataset.task, dataset.in_chans, dataset.num_classes) == (task, bands, classes)
    info = json.loads(dataset.split_file.read_text())  # the split file is part of the project
    members = [set(info[s]) for s in SPLITS]
    assert sum(len(m) for m in members) == total
    assert not (members[0] & members[1] or members[0] & members[2] or members[1] & members[2]), "splits overlap"
    assert len(info["mean"]) == len(info["std"]) == bands
    split = dataset.load("selection", limit=4)
    if task == "detection":
        assert all(x.shape[0] == 3 for x in split.x) and all(b.shape[1] == 4 and len(b) > 0 for b in split.y)
        return
    assert split.x.dtype == torch.float32 and split.x.shape[1] == bands and split.x.shape[-1] == 64
    if task == "classification":
        assert split.y.shape == (len(split),) and int(split.y.max()) < classes
    else:
        labels = split.y[split.y != 255]
        assert split.y.shape == (len(split), 64, 64) and int(labels.max()) < classes


@pytest.mark.parametrize("name", ["eurosat_ms", "cloudmask", "sen1floods11", "neon_trees"])
def test_splits_are_deterministic(root: Path, name: str) -> None:
    dataset = datasets.get(name, str(root))
    remade = dataset.make_splits()
    written = json.loads(dataset.split_file.read_text())
    assert {s: remade[s] for s in SPLITS} == {s: written[s] for s in SPLITS}
    assert torch.allclose(torch.tensor(remade["mean"]), torch.tensor(written["mean"]))


def test_eurosat_rgb_split_is_stratified(root: Path) -> None:
    from geosane.datasets.eurosat import CLASSES, class_of

    info = datasets.get("eurosat_rgb", str(root)).splits()
    counts = {s: torch.bincount(torch.tensor([class_of(i) for i in info[s]]), minlength=10) for s in SPLITS}
    total = sum(counts.values())
    for split, fraction in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
        assert torch.allclose(counts[split] / total, torch.full((10,), fraction), atol=0.002), split
    # labels come from the folder the image is in: a Forest patch is labelled Forest
    rgb = datasets.get("eurosat_rgb", str(root))
    x, y = rgb.read(["Forest_1", "SeaLake_10"])
    assert y.tolist() == [CLASSES.index("Forest"), CLASSES.index("SeaLake")] and x.shape == (2, 3, 64, 64)


def test_eurosat_ms_keeps_the_shipped_test_folder(root: Path) -> None:
    dataset = datasets.get("eurosat_ms", str(root))
    test = set(dataset.splits()["test"])
    assert test == {p.stem for p in (root / "eurosat_ms" / "test").glob("*/*.tif")}


def test_cloudmask_labels_and_sensor_holdout(root: Path) -> None:
    dataset = datasets.get("cloudmask", str(root), holdout="landsat5")
    info = dataset.make_splits()
    assert all(i.startswith("landsat5") for i in info["test"]) and len(info["test"]) == 64
    assert not any(i.startswith("landsat5") for i in info["train"] + info["selection"])
    # upstream mapping: raw 0 -> shadow (2), 1-3 -> background (0), 4 -> cloud (1)
    import numpy as np

    raw = np.load(root / "cloudmask" / "sentinel2.npz")["msk"][..., 0]
    _, labels = dataset.scene("sentinel2")
    assert (labels[raw == 0] == 2).all() and (labels[raw == 4] == 1).all() and (labels[raw == 3] == 0).all()
    with pytest.raises(GeoSANEError, match="unknown holdout sensor"):
        datasets.get("cloudmask", str(root), holdout="modis")


def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="unknown dataset 'mnist'"):
        datasets.get("mnist")
    with pytest.raises(GeoSANEError, match="EuroSAT multispectral not found"):
        datasets.get("eurosat_ms", str(tmp_path))


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root: Path) -> None:
    assert datasets.data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("GEOSANE_DATA", str(tmp_path))
    assert datasets.data_root() == tmp_path
    monkeypatch.delenv("GEOSANE_DATA")
    assert datasets.data_root().resolve() == root.resolve()


def test_full_eurosat_ms_goes_through_torchgeo(root: Path, tmp_path: Path) -> None:
    """torchgeo's EuroSAT (the path for users with the full set), on the shipped patches laid out as torchgeo
    expects them, with its official split files naming them."""
    from torchgeo.datasets import EuroSAT

    from geosane.datasets.eurosat import CLASSES

    images = tmp_path / "eurosat_ms_full" / EuroSAT.base_dir
    shipped = sorted((root / "eurosat_ms").glob("*/*/*.tif"))
    for tif in shipped:
        (images / tif.parent.name).mkdir(parents=True, exist_ok=True)
        (images / tif.parent.name / tif.name).symlink_to(tif)
    names = {
        split: [p.name.replace(".tif", ".jpg") for p in shipped if p.parts[-3] == split] for split in ("train", "test")
    }
    val = [n for c in CLASSES for n in [m for m in names["train"] if m.startswith(c + "_")][:2]]  # every class
    train = [n for n in names["train"] if n not in val]
    for theirs, files in (("train", train), ("val", val), ("test", names["test"])):
        (tmp_path / "eurosat_ms_full" / EuroSAT.split_filenames[theirs]).write_text("\n".join(files) + "\n")
    full = datasets.get("eurosat_ms_full", str(tmp_path))
    info = full.splits()
    assert (len(info["train"]), len(info["selection"]), len(info["test"])) == (196, 20, 54)
    test = full.load("test", limit=5)
    sample = datasets.get("eurosat_ms", str(root))
    raw, labels = sample.read(test.ids)
    assert test.x.shape == (5, 13, 64, 64) and torch.equal(test.y, labels)
    assert torch.allclose(
        test.x * torch.tensor(info["std"]).view(1, -1, 1, 1) + torch.tensor(info["mean"]).view(1, -1, 1, 1),
        raw,
        atol=1e-2,
    )
    with pytest.raises(GeoSANEError, match="full EuroSAT multispectral not found"):
        datasets.get("eurosat_ms_full", str(tmp_path / "empty"))


def test_dataset_specs_name_options_and_refuse_unknown_ones(root: Path) -> None:
    assert datasets.parse_dataset("cloudmask?holdout=landsat5") == ("cloudmask", {"holdout": "landsat5"})
    held = datasets.get("cloudmask?holdout=landsat5", str(root))
    assert held.spec == "cloudmask?holdout=landsat5" and set(held.splits()["test"]) == {
        i for i in held.splits()["test"] if i.startswith("landsat5")
    }
    with pytest.raises(GeoSANEError, match="eurosat_ms takes no option"):
        datasets.get("eurosat_ms?holdout=x", str(root))
    with pytest.raises(GeoSANEError, match="expected NAME"):
        datasets.get("cloudmask?holdout", str(root))
    # image keys: a patch is the same image in EuroSAT RGB and multispectral; chips of one scene are one image
    rgb, ms = datasets.get("eurosat_rgb", str(root)), datasets.get("eurosat_ms", str(root))
    assert set(rgb.image_keys("Forest_1")) & set(ms.image_keys("Forest_1")) == {"eurosat/Forest_1"}
    assert held.image_keys("landsat5_r0_c1") == held.image_keys("landsat5_r3_c3") == ("cloudmask/landsat5",)


def test_eurosat_class_subsets_are_disjoint_renumbered_and_held_out(root: Path) -> None:
    """``classes=0-4`` and ``classes=5-9`` split EuroSAT RGB by class: no shared image, labels from 0, the full
    set's splits and statistics; a zoo of the first is held out from the second, not from the full set."""
    from geosane.bench import BenchTask, held_out_problems
    from geosane.collection import ModelRecord

    seen, task = datasets.get("eurosat_rgb?classes=0-4", str(root)), datasets.get("eurosat_rgb?classes=5-9", str(root))
    full = datasets.get("eurosat_rgb", str(root))
    assert task.classes == ("Pasture", "PermanentCrop", "Residential", "River", "SeaLake") and task.num_classes == 5
    for split in SPLITS:
        assert set(task.splits()[split]) | set(seen.splits()[split]) == set(full.splits()[split])
        assert not set(task.splits()[split]) & set(seen.splits()[split])
    assert task.splits()["mean"] == full.splits()["mean"]
    x, y = task.read(["Pasture_1", "SeaLake_1"])
    assert y.tolist() == [0, 4] and x.shape == (2, 3, 64, 64)
    keys = {k for i in seen.splits()["train"] for k in seen.image_keys(i)}
    assert not keys & {k for i in task.splits()["test"] for k in task.image_keys(i)}

    def zoo(dataset: str) -> ModelRecord:
        return ModelRecord(
            id=dataset, name=dataset, source="s", source_sha256="", family="resnet", task="classification",
            modality="rgb", bands=None, in_chans=3, num_classes=5, num_params=1, num_tokens=1, token_size=32,
            mode="dense", licence="MIT", tags={"dataset": dataset, "train_limit": "500"},
        )  # fmt: skip

    transfer = BenchTask(data="eurosat_rgb?classes=5-9", arch="test_resnet", initializations=[], epochs=1, lr=1.0)
    assert held_out_problems([zoo("eurosat_rgb?classes=0-4")], transfer, str(root)) == ([], [])
    assert held_out_problems([zoo("eurosat_rgb")], transfer, str(root))[0]
    with pytest.raises(GeoSANEError, match="expected FIRST-LAST"):
        datasets.get("eurosat_rgb?classes=7-12", str(root))


def test_eurosat_ms_class_subsets_share_the_samples_splits_and_stay_held_out(root: Path) -> None:
    """The multispectral sample splits by class the same way, so a heterogeneous zoo can learn 13 bands on classes
    0-4 and the bench keep a 13-band class-transfer task on 5-9."""
    from geosane.bench import BenchTask, held_out_problems
    from geosane.collection import ModelRecord

    seen, task = datasets.get("eurosat_ms?classes=0-4", str(root)), datasets.get("eurosat_ms?classes=5-9", str(root))
    full = datasets.get("eurosat_ms", str(root))
    for split in SPLITS:
        assert set(task.splits()[split]) | set(seen.splits()[split]) == set(full.splits()[split])
        assert not set(task.splits()[split]) & set(seen.splits()[split])
    assert task.spec == "eurosat_ms?classes=5-9" and task.num_classes == 5
    x, y = task.read(task.splits()["test"][:2])
    assert x.shape[1] == 13 and set(y.tolist()) <= set(range(5))

    def zoo(dataset: str, exclude: str = "") -> ModelRecord:
        tags = {"dataset": dataset, **({"exclude": exclude} if exclude else {})}
        return ModelRecord(
            id=dataset, name=dataset, source="s", source_sha256="", family="resnet", task="classification",
            modality="multispectral", bands=None, in_chans=13, num_classes=5, num_params=1, num_tokens=1,
            token_size=32, mode="dense", licence="MIT", tags=tags,
        )  # fmt: skip

    transfer = BenchTask(data="eurosat_ms?classes=5-9", arch="test_resnet", initializations=[], epochs=1, lr=1.0)
    assert held_out_problems([zoo("eurosat_ms?classes=0-4")], transfer, str(root)) == ([], [])
    assert held_out_problems([zoo("eurosat_ms")], transfer, str(root))[0]
    # an RGB zoo on classes 0-4 shares no patch (the two modalities are the same patches) and no class with it
    assert held_out_problems([zoo("eurosat_rgb?classes=0-4", "eurosat_ms")], transfer, str(root)) == ([], [])


def test_user_data_from_npz(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 10)
    split = np.array(["train"] * 18 + ["selection"] * 6 + ["test"] * 6)
    np.savez(tmp_path / "mine.npz", x=x, y=y, split=split)
    mine = datasets.get(f"npz:{tmp_path}/mine.npz")
    assert (mine.task, mine.in_chans, mine.num_classes) == ("classification", 4, 3)
    train, test = mine.load("train"), mine.load("test")
    assert len(train) == 18 and len(test) == 6 and torch.equal(test.y, torch.from_numpy(y[24:]))
    # normalized with the train split's statistics
    assert torch.allclose(train.x.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    # segmentation maps, no split given: a seeded split, the same every time
    np.savez(tmp_path / "maps.npz", x=x, y=rng.integers(0, 2, size=(30, 8, 8)))
    maps = datasets.get(f"npz:{tmp_path}/maps.npz")
    assert (
        maps.task == "segmentation"
        and maps.splits()["test"] == datasets.get(f"npz:{tmp_path}/maps.npz").splits()["test"]
    )
    for arrays, message in [
        ({"x": x}, "no array 'y'"),
        ({"x": x[:, 0], "y": y}, r"x must be \[N, C, H, W\]"),
        ({"x": x, "y": y[:5]}, r"y must be \[N\]"),
        ({"x": x, "y": y.astype(np.float32)}, "class indices"),
        ({"x": x, "y": y, "split": np.array(["train"] * 29 + ["later"])}, "split must give train"),
    ]:
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(GeoSANEError, match=message):
            datasets.get(f"npz:{tmp_path}/bad.npz")


def test_user_data_from_an_image_folder(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for split, count in (("train", 4), ("test", 2)):
        for label in ("field", "forest"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                value = 40 if label == "field" else 200
                Image.fromarray(np.full((16, 16, 3), value + i, dtype=np.uint8)).save(folder / f"{i}.png")
    images = datasets.get(f"imagefolder:{tmp_path}/images")
    assert images.classes == ("field", "forest") and images.task == "classification"
    test = images.load("test")
    assert test.x.shape == (4, 3, 16, 16) and test.y.tolist() == [0, 0, 1, 1]
    with pytest.raises(GeoSANEError, match="not a folder"):
        datasets.get(f"imagefolder:{tmp_path}/missing")
