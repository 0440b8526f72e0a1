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


class NeonTrees(Dataset):
    name = "neon_trees"
    task = "detection"
    modality = "rgb"
    bands = ("Red", "Green", "Blue")
    classes = ("Tree",)

    def samples(self) -> tuple[list[str], list[int]]:
        folder = self.root / "neon_trees"
        ids = sorted(p.stem for p in folder.glob("*.xml") if (folder / f"{p.stem}.png").exists())
        if not ids:
            raise GeoSANEError(f"no NEON images with Pascal-VOC annotations in {folder}")
        return ids, [0] * len(ids)

    def boxes(self, sample: str) -> torch.Tensor:
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
        ids, _ = self.samples()
        order = [ids[i] for i in np.random.default_rng(self.seed).permutation(len(ids))]
        n = len(order)
        return self.with_statistics(
            {"train": sorted(order[: max(1, n - 2)]), "selection": order[n - 2 : n - 1], "test": order[n - 1 :]}
        )

    def load_ids(self, split: str, limit: int | None = None) -> list[str]:
        ids = self.splits()[split]
        return ids[:limit] if limit else ids

    def load(self, split: str, limit: int | None = None):
        from geosane.datasets.base import Samples

        info = self.splits()
        ids = self.load_ids(split, limit)
        images, boxes = self.read(ids)
        mean, std = torch.tensor(info["mean"]).view(3, 1, 1), torch.tensor(info["std"]).view(3, 1, 1)
        return Samples([(image - mean) / std for image in images], boxes, ids)  # type: ignore[arg-type]
