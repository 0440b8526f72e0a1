"""Cloud and cloud-shadow segmentation on three real scenes (Sentinel-2, Landsat 7, Landsat 5).

Each 512x512 scene is tiled into 64x64 chips. Splits are by chip, stratified by each chip's dominant class;
``holdout="landsat5"`` (or another sensor) instead makes that whole scene the test split, so a model is
scored on a sensor it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geosane.datasets.base import Dataset, stratified_split
from geosane.errors import GeoSANEError

__all__ = ["CloudMask"]

SENSORS = ("sentinel2", "landsat7", "landsat5")
#: Raw reference codes -> classes (upstream ukis-csmask mapping): 0 shadow, 1-3 clear, 4 cloud.
CODE_TO_CLASS = np.array([2, 0, 0, 0, 1], dtype=np.int64)
CHIP = 64


class CloudMask(Dataset):
    """Cloud and shadow masks on chips of three sensors, optionally holding one sensor out (``holdout``)."""

    name = "cloudmask"
    task = "segmentation"
    modality = "multispectral"
    bands = ("Blue", "Green", "Red", "NIR", "SWIR16", "SWIR22")
    classes = ("background", "cloud", "shadow")

    def __init__(self, root: Path, holdout: str | None = None) -> None:
        super().__init__(root)
        if holdout is not None and holdout not in SENSORS:
            raise GeoSANEError(f"unknown holdout sensor {holdout!r}; expected one of {', '.join(SENSORS)}")
        self.holdout = holdout
        self.folder = self.root / "cloudmask"
        missing = [s for s in SENSORS if not (self.folder / f"{s}.npz").exists()]
        if missing:
            raise GeoSANEError(f"cloud-mask scenes {missing} not found in {self.folder}")
        self._scenes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def spec(self) -> str:
        """The dataset with its options (``cloudmask?holdout=landsat5``)."""
        return f"{self.name}?holdout={self.holdout}" if self.holdout else self.name

    def image_keys(self, sample_id: str) -> tuple[str, ...]:
        """One key per scene: chips of one sensor's scene are parts of one image."""
        return (f"cloudmask/{sample_id.split('_')[0]}",)

    @property
    def split_file(self) -> Path:
        """Splits per holdout: each option has its own."""
        suffix = f"-holdout-{self.holdout}" if self.holdout else ""
        return super().split_file.with_name(f"{self.name}{suffix}.json")

    def scene(self, sensor: str) -> tuple[np.ndarray, np.ndarray]:
        """Image ``[6, H, W]`` float32 and class map ``[H, W]`` int64 of one scene."""
        if sensor not in self._scenes:
            with np.load(self.folder / f"{sensor}.npz") as data:
                image = np.ascontiguousarray(data["img"].transpose(2, 0, 1), dtype=np.float32)
                codes = data["msk"][..., 0].astype(np.int64)
            if codes.max() >= len(CODE_TO_CLASS):
                raise GeoSANEError(f"{sensor}.npz: unexpected label code {codes.max()}")
            self._scenes[sensor] = (image, CODE_TO_CLASS[codes])
        return self._scenes[sensor]

    def chip(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A chip's scene file and window."""
        sensor, row, col = sample_id.split("_")
        r, c = int(row[1:]) * CHIP, int(col[1:]) * CHIP
        image, labels = self.scene(sensor)
        return image[:, r : r + CHIP, c : c + CHIP], labels[r : r + CHIP, c : c + CHIP]

    def samples(self) -> tuple[list[str], list[int]]:
        """Every chip, with its dominant class as stratum."""
        ids, strata = [], []
        for sensor in SENSORS:
            _, labels = self.scene(sensor)
            for row in range(labels.shape[0] // CHIP):
                for col in range(labels.shape[1] // CHIP):
                    sample = f"{sensor}_r{row}_c{col}"
                    ids.append(sample)
                    strata.append(int(np.bincount(self.chip(sample)[1].ravel(), minlength=3).argmax()))
        return ids, strata

    def make_splits(self) -> dict:
        """Splits by scene: a held-out sensor is the test split."""
        ids, strata = self.samples()
        if self.holdout is None:
            return self.with_statistics(stratified_split(ids, strata, self.seed))
        keep = [k for k, i in enumerate(ids) if not i.startswith(self.holdout)]
        inner = stratified_split([ids[k] for k in keep], [strata[k] for k in keep], self.seed)
        return self.with_statistics(
            {
                "train": sorted(inner["train"] + inner["test"]),
                "selection": inner["selection"],
                "test": sorted(i for i in ids if i.startswith(self.holdout)),
            }
        )

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chips and their masks."""
        chips = [self.chip(i) for i in ids]
        x = torch.from_numpy(np.stack([c[0] for c in chips]))
        y = torch.from_numpy(np.stack([c[1] for c in chips]))
        return x, y
