"""EuroSAT: Sentinel-2 patches, 64x64, 10 land-cover classes; RGB (all 27,000) and multispectral (13 bands)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geosane.datasets.base import SPLITS, Dataset, stratified_split
from geosane.errors import GeoSANEError

__all__ = ["CLASSES", "EuroSATMS", "EuroSATMSFull", "EuroSATRGB", "class_of"]

CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
MS_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")


def patch_keys(dataset: str, sample_id: str) -> tuple[str, ...]:
    """EuroSAT's RGB and multispectral files are the same patches (same names): a model trained on the RGB version
    of a patch has seen the patch. The dataset itself is a key too: its train and test patches come from the same
    scenes."""
    return (dataset, f"eurosat/{sample_id}")


def class_of(sample_id: str) -> int:
    """``Forest_1031`` -> index of ``Forest``."""
    return CLASSES.index(sample_id.rsplit("_", 1)[0])


def parse_classes(text: str) -> tuple[int, ...]:
    """``0-4`` or ``5,7,9`` -> class indices into :data:`CLASSES` (sorted, distinct), or an error showing the form."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-"))
            indices = tuple(range(first, last + 1))
        else:
            indices = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        indices = ()
    if not indices or min(indices) < 0 or max(indices) >= len(CLASSES):
        raise GeoSANEError(f"eurosat_rgb classes={text!r}: expected FIRST-LAST or I,J,... within 0-{len(CLASSES) - 1}")
    return indices


class ClassSubset(Dataset):
    """A EuroSAT set whose ``classes=5-9`` option keeps some of the ten classes (renumbered from 0), for
    class-transfer tasks: a zoo trains on ``classes=0-4`` and a task asks for the other five. A subset keeps the full
    set's splits and statistics, so its images are provably disjoint from the other subset's, and it is its own
    dataset in held-out checks. Subclasses set ``paths`` (every patch of the full set) before :meth:`keep`."""

    paths: dict[str, Path]

    def keep(self, classes: str | None) -> None:
        """Keep the patches of ``classes`` (all when None)."""
        self.subset = parse_classes(classes) if classes else tuple(range(len(CLASSES)))
        self.option = classes
        self.classes = tuple(CLASSES[i] for i in self.subset)  # type: ignore[misc]
        self.paths = {i: p for i, p in self.paths.items() if class_of(i) in self.subset}

    @property
    def spec(self) -> str:
        """The dataset with its class subset (``eurosat_rgb?classes=5-9``)."""
        return f"{self.name}?classes={self.option}" if self.option else self.name

    def label(self, sample_id: str) -> int:
        """A patch's class within the subset."""
        return self.subset.index(class_of(sample_id))

    def samples(self) -> tuple[list[str], list[int]]:
        """Every patch and its class."""
        ids = sorted(self.paths)
        return ids, [self.label(i) for i in ids]

    def splits(self) -> dict:
        """The full set's written-down splits and statistics, less the patches of other classes."""
        full = super().splits()
        if not self.option:
            return full
        return {**full, "dataset": self.spec, **{s: [i for i in full[s] if i in self.paths] for s in SPLITS}}

    def image_keys(self, sample_id: str) -> tuple[str, ...]:
        """The patch itself (the other modality's version of a patch has the same key), the dataset (its train and
        test patches come from the same scenes) and the patch's class in this modality: a model that learned a
        class from any of its patches is not held out from a class-transfer task on it."""
        return (*patch_keys(self.spec, sample_id), f"{self.name}/{sample_id.rsplit('_', 1)[0]}")


class EuroSATRGB(ClassSubset):
    """All of EuroSAT RGB through ``torchvision.datasets.EuroSAT`` (which downloads for users who lack it);
    ``classes=5-9`` keeps a class subset (:class:`ClassSubset`)."""

    name = "eurosat_rgb"
    task = "classification"
    modality = "rgb"
    bands = ("B04", "B03", "B02")
    classes = CLASSES

    def __init__(self, root: Path, download: bool = False, classes: str | None = None) -> None:
        super().__init__(root)
        import torchvision

        try:
            self.source = torchvision.datasets.EuroSAT(str(self.root), download=download)
        except RuntimeError as exc:
            raise GeoSANEError(f"EuroSAT RGB not found under {self.root}/eurosat/2750 ({exc})") from exc
        if tuple(self.source.classes) != CLASSES:
            raise GeoSANEError(f"EuroSAT classes under {self.root} are {self.source.classes}, expected {CLASSES}")
        self.paths = {Path(p).stem: Path(p) for p, _ in self.source.samples}
        self.keep(classes)

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches and their classes."""
        from PIL import Image

        images = np.stack([np.asarray(Image.open(self.paths[i]).convert("RGB")) for i in ids])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(), torch.tensor([self.label(i) for i in ids])


class EuroSATMS(ClassSubset):
    """EuroSAT multispectral (13 bands, uint16 L1C reflectance) from the shipped sample; ``classes=5-9`` keeps a
    class subset (:class:`ClassSubset`).

    Its official ``train``/``test`` folders are respected: test is the shipped test folder, and selection is a
    stratified part of the shipped train folder. Users with the full set can use torchgeo's ``EuroSAT``.
    """

    name = "eurosat_ms"
    task = "classification"
    modality = "multispectral"
    sentinel2_dn = True
    bands = MS_BANDS
    classes = CLASSES

    def __init__(self, root: Path, classes: str | None = None) -> None:
        super().__init__(root)
        self.folder = self.root / "eurosat_ms"
        if not self.folder.is_dir():
            raise GeoSANEError(f"EuroSAT multispectral not found at {self.folder}")
        self.paths = {p.stem: p for p in sorted(self.folder.glob("*/*/*.tif"))}
        self.official = {p.stem: p.parts[-3] for p in self.paths.values()}
        self.keep(classes)

    def make_splits(self) -> dict:
        """The shipped test folder is test; a stratified tenth of the shipped train folder is selection (always
        made from the full sample, so that class subsets share its splits)."""
        trainval = sorted(i for i in self.official if self.official[i] == "train")
        inner = stratified_split(trainval, [class_of(i) for i in trainval], self.seed)
        return self.with_statistics(
            {
                "train": sorted(inner["train"] + inner["test"]),
                "selection": inner["selection"],
                "test": sorted(i for i in self.official if self.official[i] == "test"),
            }
        )

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (13 bands) and their classes."""
        import rasterio

        arrays = []
        for i in ids:
            with rasterio.open(self.paths[i]) as src:
                arrays.append(src.read().astype(np.float32))
        return torch.from_numpy(np.stack(arrays)), torch.tensor([self.label(i) for i in ids])


class EuroSATMSFull(Dataset):
    """The full EuroSAT multispectral set (27,000 patches) through ``torchgeo.datasets.EuroSAT``.

    Uses torchgeo's official train/val/test split files (val is our selection split); ``download=True`` lets
    torchgeo fetch the set into ``<root>/eurosat_ms_full`` for users with internet access. Normalization
    statistics come from a seeded sample of 1,000 training patches, computed when first needed.
    """

    name = "eurosat_ms_full"
    task = "classification"
    modality = "multispectral"
    sentinel2_dn = True
    bands = MS_BANDS  # torchgeo's band order, the files' order
    classes = CLASSES
    SPLIT_NAMES = {"train": "train", "selection": "val", "test": "test"}

    def __init__(self, root: Path, download: bool = False) -> None:
        super().__init__(root)
        from torchgeo.datasets import EuroSAT as TorchgeoEuroSAT
        from torchgeo.datasets.errors import DatasetNotFoundError

        folder = self.root / "eurosat_ms_full"
        try:
            self.sources = {
                ours: TorchgeoEuroSAT(str(folder), split=theirs, download=download)
                for ours, theirs in self.SPLIT_NAMES.items()
            }
        except DatasetNotFoundError as exc:
            raise GeoSANEError(f"full EuroSAT multispectral not found in {folder} (torchgeo: {exc})") from exc
        self.paths = {Path(p).stem: p for source in self.sources.values() for p, _ in source.samples}
        self._splits: dict | None = None

    def image_keys(self, sample_id: str) -> tuple[str, ...]:
        """The patch itself."""
        return ("eurosat_ms", f"eurosat/{sample_id}")  # the sample is a part of the full set

    def splits(self) -> dict:
        """torchgeo's own splits (the full dataset is not here to split)."""
        if self._splits is None:
            splits = {ours: sorted(Path(p).stem for p, _ in source.samples) for ours, source in self.sources.items()}
            rng = np.random.default_rng(self.seed)
            sample = sorted(rng.choice(splits["train"], size=min(1000, len(splits["train"])), replace=False))
            x, _ = self.read(list(sample))
            self._splits = {
                "dataset": self.name,
                "source": "torchgeo official splits",
                **splits,
                "mean": x.mean(dim=(0, 2, 3)).tolist(),
                "std": x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist(),
            }
        return self._splits

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (13 bands) and their classes, through torchgeo."""
        from torchgeo.datasets.utils import rasterio_loader

        images = np.stack([rasterio_loader(self.paths[i]) for i in ids]).astype(np.float32)  # [N, H, W, C]
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([class_of(i) for i in ids])
