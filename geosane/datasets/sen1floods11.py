"""Sen1Floods11 hand-labelled chips: Sentinel-1 SAR (VV, VH in dB) with water / dry labels.

The loader reads the dataset's folder layout (``S1/<event>_S1Hand.tif``, ``S2/<event>_S2Hand.tif``,
``Labels/<event>_LabelHand.tif``), so the full set drops in where the shipped chip is. Each 512x512 chip is
tiled into 64x64 tiles; nodata (-1) labels become the ignore index 255.
"""

from __future__ import annotations

import numpy as np
import torch

from geosane.datasets.base import Dataset
from geosane.errors import GeoSANEError

__all__ = ["Sen1Floods11"]

TILE = 64
IGNORE = 255


class Sen1Floods11(Dataset):
    """Sen1Floods11: Sentinel-1 SAR chips with water masks (segmentation)."""

    name = "sen1floods11"
    task = "segmentation"
    modality = "sar"
    bands = ("VV", "VH")
    classes = ("dry", "water")

    def chips(self) -> list[str]:
        """The chips that have both image and mask."""
        folder = self.root / "sen1floods11" / "S1"
        chips = sorted(p.name.removesuffix("_S1Hand.tif") for p in folder.glob("*_S1Hand.tif"))
        if not chips:
            raise GeoSANEError(f"no Sen1Floods11 chips (*_S1Hand.tif) in {folder}")
        return chips

    def raster(self, chip: str) -> tuple[np.ndarray, np.ndarray]:
        """A chip's raster as a float array."""
        import rasterio

        base = self.root / "sen1floods11"
        with rasterio.open(base / "S1" / f"{chip}_S1Hand.tif") as src:
            sar = np.nan_to_num(src.read().astype(np.float32), nan=0.0)
        with rasterio.open(base / "Labels" / f"{chip}_LabelHand.tif") as src:
            label = src.read(1).astype(np.int64)
        if sar.shape[1:] != label.shape:
            raise GeoSANEError(f"{chip}: S1 is {sar.shape[1:]} but labels are {label.shape}")
        label[label < 0] = IGNORE
        return sar, label

    def samples(self) -> tuple[list[str], list[int]]:
        """Tiles of every chip, with their dominant class."""
        ids, strata = [], []
        for chip in self.chips():
            sar, label = self.raster(chip)
            for r in range(label.shape[0] // TILE):
                for c in range(label.shape[1] // TILE):
                    tile = label[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
                    ids.append(f"{chip}:r{r}_c{c}")
                    strata.append(int((tile == 1).mean() > 0.1))
        return ids, strata

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles and their masks."""
        xs, ys, cache = [], [], {}
        for sample in ids:
            chip, tile = sample.split(":")
            r, c = (int(part[1:]) for part in tile.split("_"))
            if chip not in cache:
                cache[chip] = self.raster(chip)
            sar, label = cache[chip]
            xs.append(sar[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
            ys.append(label[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
