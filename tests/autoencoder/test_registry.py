"""The shipped autoencoders: each loads by name, its files match its card, it reproduces its card's reference error,
and the whole set stays within 30 MB. Generation and the bench use it when no autoencoder is named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import geosane
from geosane.autoencoder import registry
from geosane.bench import BenchConfig, BenchTask, check_held_out, collection_of
from geosane.errors import GeoSANEError

SHIPPED = registry.names()


def test_something_ships_and_the_default_is_among_it() -> None:
    assert registry.DEFAULT in SHIPPED


def test_the_shipped_set_stays_within_30_mb() -> None:
    size = sum(p.stat().st_size for p in registry.SHIPPED.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert 0 < size <= 30e6


@pytest.mark.parametrize("url", SHIPPED)
def test_shipped_autoencoder_matches_its_card_and_reproduces_its_reference_error(url: str) -> None:
    card = registry.card(url)
    folder = registry.folder(url)  # raises on any file that differs from the card
    assert registry.file_hashes(folder) == card.files
    assert {"model.safetensors", "config.json", "CARD.md"} <= set(card.files)
    autoencoder = geosane.Autoencoder.load(url)
    assert autoencoder.info["url"] == url
    anchors = geosane.Collection(autoencoder.anchors)
    reference = card.reference
    assert reference.part == "held out"  # a model the autoencoder never trained on
    record = anchors.record(reference.id)
    error = autoencoder.reconstruction_error(anchors.tokens(record))
    assert error == pytest.approx(reference.normalized_error, rel=1e-5)
    # the card accounts for every anchor, its licence and what it learned from
    assert len(anchors.records()) == card.anchors.count
    assert sum(card.licences.models.values()) == len(card.collection.models)
    assert all(r["licence"] in ("MIT", "Apache-2.0") for r in card.collection.models)


def copy_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped folder that the registry reads instead of the package's."""
    copy = tmp_path / "shipped"
    shutil.copytree(registry.SHIPPED, copy)
    monkeypatch.setattr(registry, "SHIPPED", copy)
    folder = copy / registry.DEFAULT.removeprefix(registry.PREFIX)
    monkeypatch.setitem(registry.AUTOENCODERS.entries, registry.DEFAULT, folder)
    return folder


@pytest.mark.parametrize("damage", ["flip", "delete", "add"])
def test_a_changed_shipped_file_is_refused_by_name(damage: str, tmp_path: Path, monkeypatch) -> None:
    folder = copy_shipped(tmp_path, monkeypatch)
    weights = folder / "model.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        weights = folder / "extra.bin"
        weights.write_bytes(b"x")
    with pytest.raises(GeoSANEError, match=weights.name):
        geosane.Autoencoder.load(registry.DEFAULT)


def test_an_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(GeoSANEError, match=registry.DEFAULT):
        geosane.Autoencoder.load("geosane:no-such-autoencoder")
    with pytest.raises(GeoSANEError, match="no training checkpoints"):
        geosane.Autoencoder.load(registry.DEFAULT, step=1)


def test_generate_without_an_autoencoder_uses_the_shipped_one(tmp_path: Path) -> None:
    """The issue's command, with no zoo built: the shipped autoencoder and, for a query, its shipped anchors."""
    out = tmp_path / "generated"
    command = [
        str(Path(sys.executable).with_name("geosane")),
        "generate",
        "--prompt",
        "timm:test_resnet?in_chans=13&num_classes=5",
        "--data",
        "eurosat_ms?classes=5-9",
        "--anchors",
        "dataset=eurosat_ms",
        "--candidates",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((out / "model-1.json").read_text())
    assert card["autoencoder"]["url"] == registry.DEFAULT
    (anchor,) = card["anchors"]
    assert anchor["tags"]["dataset"] == "eurosat_ms?classes=0-4"  # dataset=eurosat_ms matched its class subset
    assert anchor["tags"]["precision"] == "float16"


def test_the_bench_checks_held_out_tasks_against_everything_the_shipped_autoencoder_learned(shared: Path) -> None:
    """Its anchors are a few models; the card lists all 300-odd it learned, and the held-out check reads them."""

    def config(data: str) -> BenchConfig:
        task = BenchTask(data=data, arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.001, held_out=True)
        return BenchConfig(name="held-out", tasks=[task])

    unseen = config("eurosat_rgb?classes=5-9")
    assert unseen.autoencoder == registry.DEFAULT
    report = check_held_out(unseen, collection_of(unseen))
    learned = len(registry.card(registry.DEFAULT).collection.models)
    assert report[unseen.tasks[0].name]["checked_models"] == learned
    seen = config("eurosat_rgb")  # classes 0-4 of its test split were learned by the zoo models behind it
    with pytest.raises(GeoSANEError, match="trained on its test"):
        check_held_out(seen, collection_of(seen))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("delete an anchor", "models.lance"),
        ("add an anchor", "extra.lance"),
        ("flip a byte of the card", "card.json"),
        ("lose the card's hash", "card.sha256"),
        ("change the weights' hash in config.json", "config.json: SHA-256"),
    ],
)
def test_a_shipped_autoencoder_loaded_by_path_gets_every_check(damage: str, named: str, tmp_path: Path) -> None:
    """Loaded by its folder's path, a shipped autoencoder is checked as by name: every file its card lists, no
    other file, and the card itself against its own hash; the error names the file that differs."""
    folder = tmp_path / "small"
    shutil.copytree(registry.folder(registry.DEFAULT), folder)
    geosane.Autoencoder.load(str(folder))  # intact: loads
    if damage == "delete an anchor":
        next(p for p in sorted((folder / "anchors").rglob("*")) if p.is_file() and "data" in p.parts).unlink()
    elif damage == "add an anchor":
        (folder / "anchors" / "extra.lance").write_bytes(b"x")
    elif damage == "flip a byte of the card":
        text = (folder / "card.json").read_text()
        (folder / "card.json").write_text(text.replace('"small"', '"smalL"', 1))
    elif damage == "lose the card's hash":
        (folder / "card.sha256").unlink()
    else:
        config = json.loads((folder / "config.json").read_text())
        config["sha256"]["model.safetensors"] = "0" * 64
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GeoSANEError, match=named):
        geosane.Autoencoder.load(str(folder))
