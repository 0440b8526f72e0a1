"""Paper-scale downstream datasets through torchgeo: RESISC45, BigEarthNet and DIOR.

None of them is on these machines; users with internet access let torchgeo download them (``download=True``) into
``<data root>/<name>``, and clusters read them from a shared volume. Splits are torchgeo's official ones (``val`` is
our selection split); normalization statistics come from a seeded sample of 512 training samples. Samples are read
one by one through torchgeo, so loading a split is for the sizes a benchmark task limits it to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from geosane.datasets.base import Dataset
from geosane.errors import GeoSANEError

__all__ = ["BigEarthNet", "DIOR", "RESISC45"]

SPLIT_NAMES = {"train": "train", "selection": "val", "test": "test"}
RGB = ("Red", "Green", "Blue")


def numbered(count: int) -> tuple[str, ...]:
    """Placeholder class names ``class0``, ``class1``...: torchgeo reads the real ones from the dataset's files."""
    return tuple(f"class{i}" for i in range(count))


class TorchgeoSet(Dataset):
    """What the three share: torchgeo's official splits, samples by index, statistics from a sample."""

    source: ClassVar[str]  # the torchgeo class name
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: Path, download: bool = False) -> None:
        super().__init__(root)
        import torchgeo.datasets
        from torchgeo.datasets.errors import DatasetNotFoundError

        cls = getattr(torchgeo.datasets, self.source)
        folder = self.root / self.name
        try:
            self.sources = {
                ours: cls(str(folder), split=theirs, download=download, **self.options)
                for ours, theirs in SPLIT_NAMES.items()
            }
        except DatasetNotFoundError as exc:
            raise GeoSANEError(f"{self.name} not found in {folder} (torchgeo: {exc})") from exc
        self._splits: dict | None = None

    def splits(self) -> dict:
        if self._splits is None:
            ids = {ours: [f"{ours}/{i}" for i in range(len(source))] for ours, source in self.sources.items()}
            rng = np.random.default_rng(self.seed)
            sample = sorted(rng.choice(ids["train"], size=min(512, len(ids["train"])), replace=False).tolist())
            images = [self.sample(i)["image"].float() for i in sample]
            pixels = torch.cat([image.reshape(image.shape[0], -1) for image in images], dim=1)
            self._splits = {
                "dataset": self.name,
                "source": "torchgeo official splits",
                **ids,
                "mean": pixels.mean(1).tolist(),
                "std": pixels.std(1).clamp_min(1e-6).tolist(),
            }
        return self._splits

    def sample(self, sample_id: str) -> dict[str, torch.Tensor]:
        split, index = sample_id.split("/")
        return self.sources[split][int(index)]

    def read(self, ids: list[str]) -> tuple[Any, Any]:
        samples = [self.sample(i) for i in ids]
        return torch.stack([s["image"].float() for s in samples]), torch.stack([s["label"] for s in samples])


class RESISC45(TorchgeoSet):
    """NWPU-RESISC45 scene classification, read through torchgeo (class names come from its files)."""

    name, source, task, modality, bands = "resisc45", "RESISC45", "classification", "rgb", RGB
    classes = numbered(45)


class BigEarthNet(TorchgeoSet):
    """Multi-label: 19 land-cover classes, Sentinel-2's 12 bands; scored by dataset-level mAP."""

    name, source, task, modality = "bigearthnet", "BigEarthNet", "multilabel", "multispectral"
    options: ClassVar[dict[str, Any]] = {"bands": "s2", "num_classes": 19}
    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    classes = numbered(19)


class DIOR(TorchgeoSet):
    """Object detection, 20 classes, 800x800 optical images; targets are ``{"boxes", "labels"}`` per image."""

    name, source, task, modality, bands = "dior", "DIOR", "detection", "rgb", RGB
    classes = numbered(20)

    def read(self, ids: list[str]) -> tuple[Any, Any]:  # images of one size, boxes of many counts
        """Images (of different sizes) and their boxes, through torchgeo."""
        samples = [self.sample(i) for i in ids]
        targets = [{"boxes": s["bbox_xyxy"].float(), "labels": s["label"].long() + 1} for s in samples]
        return [s["image"].float() for s in samples], targets
