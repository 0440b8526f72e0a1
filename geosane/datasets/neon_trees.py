"""NEON tree crowns: 10 cm RGB aerial images with Pascal-VOC boxes (object detection).

Splits are by image (there are four); targets are lists of ``[K, 4]`` boxes (xmin, ymin, xmax, ymax).
Images differ in size, so ``read`` returns a list of ``[3, H, W]`` tensors rather than one batch.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import torch

from geosane.datasets.base import Dataset
from geosane.errors import GeoSANEError

__all__ = ["NeonTrees"]


class NeonTrees(Dataset):
    """NEON tree crowns: RGB scenes with boxes (detection)."""

    name = "neon_trees"
    task = "detection"
    modality = "rgb"
    resolution_m = 0.1  # NEON's airborne RGB
    bands = ("Red", "Green", "Blue")
    classes = ("Tree",)

    def samples(self) -> tuple[list[str], list[int]]:
        """Every scene, one stratum."""
        folder = self.root / "neon_trees"
        ids = sorted(p.stem for p in folder.glob("*.xml") if (folder / f"{p.stem}.png").exists())
        if not ids:
            raise GeoSANEError(f"no NEON images with Pascal-VOC annotations in {folder}")
        return ids, [0] * len(ids)

    def boxes(self, sample: str) -> torch.Tensor:
        """A scene's boxes from its annotation file."""
        path = self.root / "neon_trees" / f"{sample}.xml"
        root = ET.parse(path).getroot()
        boxes = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise GeoSANEError(f"{path}: an object has no bndbox")
            corners = [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            if None in corners:
                raise GeoSANEError(f"{path}: a bndbox lacks one of xmin, ymin, xmax, ymax")
            boxes.append([float(c) for c in corners if c is not None])
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)

    def read(self, ids: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # type: ignore[override]
        """Scenes (of different sizes) and their boxes."""
        from PIL import Image

        images = [
            torch.from_numpy(np.array(Image.open(self.root / "neon_trees" / f"{i}.png").convert("RGB")))
            .permute(2, 0, 1)
            .float()
            .div(255)
            for i in ids
        ]
        return images, [self.boxes(i) for i in ids]

    def with_statistics(self, splits: dict[str, list[str]]) -> dict:
        """Splits with per-band statistics over the train scenes of different sizes."""
        images, _ = self.read(splits["train"])
        pixels = torch.cat([image.reshape(3, -1) for image in images], dim=1)
        return {
            "dataset": self.name,
            "seed": self.seed,
            "mean": pixels.mean(1).tolist(),
            "std": pixels.std(1).tolist(),
            **splits,
        }

    def make_splits(self) -> dict:
        """Splits by scene."""
        ids, _ = self.samples()
        order = [ids[i] for i in np.random.default_rng(self.seed).permutation(len(ids))]
        n = len(order)
        return self.with_statistics(
            {"train": sorted(order[: max(1, n - 2)]), "selection": order[n - 2 : n - 1], "test": order[n - 1 :]}
        )

    def load_ids(self, split: str, limit: int | None = None) -> list[str]:
        """The image ids of a split (detection images are whole scenes).

        Args:
            split: ``train``, ``selection`` or ``test``.
            limit: at most this many; None: all.

        Returns:
            The ids.
        """
        ids = self.splits()[split]
        return ids[:limit] if limit else ids
