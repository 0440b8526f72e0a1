"""Shared pieces of the bench's tests: the real data root, a workspace shaped like the bench's zoo (an untrained
autoencoder and a collection), sweep settings for it, and the tasks every initialization is tried on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.bench import BenchConfig, BenchTask
from geosane.collection import Collection, sources
from geosane.tokenizer import TokenizerConfig

SWEEPS = Path(__file__).parents[2] / "sweeps"
LIGHT = {"channels": [32, 32, 32, 48]}  # test_resnet at 40% of its parameters


@pytest.fixture(scope="session")
def data_root(shared: Path) -> str:
    return str(shared / "data")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An untrained autoencoder and a collection shaped like the bench's zoo: EuroSAT RGB classifiers (tagged as the
    zoo tags them, multispectral patches excluded) and a cloud-mask segmentation model with Landsat 5 held out."""
    from geosane.tasks import create_model

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    Autoencoder(AutoencoderConfig(token_size=32, window=32), {"step": 0}).save(str(root / "autoencoder"))
    found = []
    start = root / "start.safetensors"  # the checkpoint the RGB classifiers say they started from (merged reads it)
    save_file(sources.load("timm:test_resnet?num_classes=10&seed=9").state_dict, str(start))
    for seed in (0, 1):
        source = sources.load(f"timm:test_resnet?num_classes=10&seed={seed}")
        source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet", "exclude": "eurosat_ms", "train_limit": "64"}
        source.tags["started_from"] = str(start)
        source.metrics = {"test_accuracy": 0.5 + seed / 10}
        found.append(source)
    torch.manual_seed(2)
    segmenter = create_model("test_resnet", "segmentation", 6, 3).state_dict()
    found.append(
        sources.ModelSource(
            name="test_resnet-cloudmask",
            uri="zoo:test/cloudmask",
            sha256=sources.content_sha256(segmenter),
            state_dict=segmenter,
            family="resnet",
            task="segmentation",
            in_chans=6,
            num_classes=3,
            tags={"dataset": "cloudmask?holdout=landsat5", "arch": "test_resnet"},
        )
    )
    torch.manual_seed(3)
    vit = create_model("test_vit", "classification", 3, 10, 64).state_dict()  # as the zoo builds it: for 64 pixels
    found.append(
        sources.ModelSource(
            name="test_vit-eurosat_rgb",
            uri="zoo:test/vit",
            sha256=sources.content_sha256(vit),
            state_dict=vit,
            family="vision_transformer",
            task="classification",
            in_chans=3,
            num_classes=10,
            tags={"dataset": "eurosat_rgb", "arch": "test_vit", "exclude": "eurosat_ms"},
        )
    )
    Collection(str(root / "collection")).add(found, TokenizerConfig(token_size=32), progress=False)
    return {"autoencoder": str(root / "autoencoder"), "collection": str(root / "collection"), "root": str(root)}


def config_for(workspace: dict[str, str], data_root: str, tasks: list[BenchTask], **settings) -> BenchConfig:
    return BenchConfig(
        name="test",
        autoencoder=workspace["autoencoder"],
        collection=workspace["collection"],
        tasks=tasks,
        seeds=[0],
        candidates=2,
        data_root=data_root,
        **settings,
    )


TASKS = {
    "eurosat_ms": BenchTask(
        data="eurosat_ms", arch="test_resnet", initializations=[], epochs=1, lr=0.003, anchors="dataset=eurosat_rgb"
    ),
    "cloudmask": BenchTask(
        data="cloudmask?holdout=landsat5",
        arch="test_resnet",
        initializations=[],
        epochs=1,
        lr=0.003,
        train_limit=16,
        test_limit=4,
        selection_limit=4,
        anchors="dataset=cloudmask?holdout=landsat5",
    ),
    "neon_trees": BenchTask(
        data="neon_trees", arch="test_resnet", initializations=[], epochs=1, lr=0.003, image_size=160, train_limit=1
    ),
    # a ViT prompt is built for the data's 64 pixels, as its anchors and its task model are
    "eurosat_ms-vit": BenchTask(
        data="eurosat_ms", arch="test_vit", initializations=[], epochs=1, lr=0.003, anchors="arch=test_vit"
    ),
    "eurosat_rgb-light": BenchTask(
        data="eurosat_rgb",
        arch="test_resnet",
        model_kwargs=LIGHT,
        initializations=[],
        epochs=1,
        lr=0.003,
        train_limit=64,
        test_limit=32,
        selection_limit=32,
        anchors="dataset=eurosat_rgb",
    ),
}
#: Which initialization runs on which task (pruning and distillation are for classification, the specialist exists
#: for cloud masks).
PAIRS = [
    *(
        (init, task)
        for init in ("generated", "scratch", "prompt")
        for task in ("eurosat_ms", "cloudmask", "neon_trees")
    ),
    *((init, task) for init in ("anchor", "decoded", "noised", "soup") for task in ("eurosat_ms", "cloudmask")),
    *((init, "eurosat_ms-vit") for init in ("generated", "noised")),
    ("foundation", "eurosat_ms"),
    ("merged", "eurosat_ms"),
    ("specialist", "cloudmask"),
    *((init, "eurosat_rgb-light") for init in ("generated", "scratch", "pruned", "distilled")),
]


def record(name: str, **tags: str):
    from geosane.collection import ModelRecord

    return ModelRecord(
        id=name, name=name, source="s", source_sha256="", family="resnet", task="classification",
        modality="rgb", bands=None, in_chans=3, num_classes=10, num_params=1, num_tokens=1, token_size=32,
        mode="dense", licence="MIT", tags=tags,
    )  # fmt: skip


def phase_rows(choices: dict[tuple[str, float], float], phase: str = "grid") -> list[dict]:
    """Selection scores at the last epoch per (initialization, learning rate), seeds 0-2."""
    return [
        {"task": "t", "initialization": init, "lr": lr, "seed": seed, "epoch": 1, "phase": phase,
         "selection_score": selection, "test_score": 0.5, "metric": "accuracy", "parameters": 1}
        for (init, lr), selection in choices.items()
        for seed in (0, 1, 2)
    ]  # fmt: skip
