"""A user's own data as a task, without writing a dataset class: ``npz:PATH`` and ``imagefolder:DIR``.

``npz:PATH`` holds arrays ``x`` ``[N, C, H, W]`` and ``y`` (``[N]`` class labels for classification, ``[N, H, W]``
class maps for segmentation, 255 marking nodata), and optionally ``split`` ``[N]`` with ``train``, ``selection``
or ``test`` per sample (or 0, 1, 2); without it a seeded split stratified by class is made. ``imagefolder:DIR`` is
torchvision's layout: ``DIR/<class>/<image>`` (RGB), or ``DIR/{train,selection,test}/<class>/<image>`` to give the
split. Neither is written into the project: the split is made in memory, the same every time (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geosane.datasets.base import SPLITS, Dataset, stratified_split
from geosane.errors import GeoSANEError

__all__ = ["IMAGEFOLDER", "NPZ", "ImageFolderDataset", "NpzDataset"]

NPZ, IMAGEFOLDER = "npz:", "imagefolder:"


class UserDataset(Dataset):
    """What both kinds share: the arrays in memory, a split made once, statistics from the train split. Unlike the
    registered datasets, name, task, bands and classes are the files' (set per instance)."""

    modality = "user"

    def __init__(self, root: Path, location: str) -> None:
        super().__init__(root)
        self.location = location
        self.x, self.y, given = self.arrays()
        self._splits: dict | None = None
        self._given = given

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return self.name

    def samples(self) -> tuple[list[str], list[int]]:
        ids = [str(i) for i in range(len(self.x))]
        if self.y.dim() == 1:
            labels = self.y
        elif self.y.dim() == 2:  # multi-label: stratify by the first label present
            labels = self.y.argmax(1)
        else:  # class maps: by each map's most common class
            labels = self.y.flatten(1).mode(1).values
        return ids, labels.tolist()

    def splits(self) -> dict:
        if self._splits is None:
            ids, strata = self.samples()
            if self._given is not None:
                chosen = {s: [i for i, g in zip(ids, self._given, strict=True) if g == s] for s in SPLITS}
            else:
                chosen = stratified_split(ids, strata, self.seed)
            missing = [s for s in ("train", "test") if not chosen[s]]
            if missing:
                raise GeoSANEError(f"{self.location}: the {' and '.join(missing)} split(s) are empty")
            self._splits = self.with_statistics(chosen)
        return self._splits

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([int(i) for i in ids], dtype=torch.long)
        return self.x[index], self.y[index]


class NpzDataset(UserDataset):
    """``npz:PATH``: arrays ``x``, ``y`` and an optional ``split`` (see the module docstring)."""

    def __init__(self, root: Path, path: str) -> None:
        self.path = Path(path)
        self.name = f"{NPZ}{path}"  # type: ignore[misc]
        super().__init__(root, path)

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """The file's arrays, checked (named errors for every malformed case)."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise GeoSANEError(f"{self.path}: not found") from None
        except (ValueError, OSError) as exc:
            raise GeoSANEError(f"{self.path}: not a readable .npz of plain arrays ({exc})") from None
        for key in ("x", "y"):
            if key not in arrays:
                raise GeoSANEError(f"{self.path}: no array {key!r} (has {', '.join(sorted(arrays)) or 'none'})")
        x, y = arrays["x"], arrays["y"]
        if x.ndim != 4:
            raise GeoSANEError(f"{self.path}: x must be [N, C, H, W], got shape {list(x.shape)}")
        if y.ndim not in (1, 2, 3) or len(y) != len(x) or (y.ndim == 3 and y.shape[1:] != x.shape[2:]):
            raise GeoSANEError(
                f"{self.path}: y must be [N] (classes), [N, K] (multi-label, 0/1) or [N, H, W] (class maps) for x of "
                f"shape {list(x.shape)}, got {list(y.shape)}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise GeoSANEError(f"{self.path}: y must hold class indices (integers >= 0), got {y.dtype}")
        self.task = {1: "classification", 2: "multilabel", 3: "segmentation"}[y.ndim]  # type: ignore[misc]
        self.bands = tuple(f"band{c}" for c in range(x.shape[1]))  # type: ignore[misc]
        labels = y[y != 255] if y.ndim == 3 else y
        count = y.shape[1] if y.ndim == 2 else int(labels.max()) + 1
        self.classes = tuple(str(c) for c in range(count))  # type: ignore[misc]
        given = None
        if "split" in arrays:
            names = {0: "train", 1: "selection", 2: "test"}
            given = [names.get(v, v) if not isinstance(v, str) else v for v in arrays["split"].tolist()]
            unknown = sorted({str(g) for g in given} - set(SPLITS))
            if len(given) != len(x) or unknown:
                raise GeoSANEError(
                    f"{self.path}: split must give train, selection or test (or 0, 1, 2) for each of the "
                    f"{len(x)} samples" + (f"; got {unknown[:3]}" if unknown else f"; got {len(given)} values")
                )
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), given


class ImageFolderDataset(UserDataset):
    """``imagefolder:DIR``: torchvision's ``ImageFolder`` layout, optionally one folder per split."""

    task = "classification"
    modality = "rgb"
    bands = ("Red", "Green", "Blue")

    def __init__(self, root: Path, folder: str) -> None:
        self.folder = Path(folder)
        self.name = f"{IMAGEFOLDER}{folder}"  # type: ignore[misc]
        super().__init__(root, folder)

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """The folder's images and labels in torchvision's layout."""
        from torchvision.datasets import ImageFolder

        if not self.folder.is_dir():
            raise GeoSANEError(f"{self.folder}: not a folder")
        split_folders = [s for s in SPLITS if (self.folder / s).is_dir()]
        parts = [(s, self.folder / s) for s in split_folders] if split_folders else [(None, self.folder)]
        images: list[np.ndarray] = []
        labels: list[int] = []
        given: list[str] = []
        classes: list[str] | None = None
        for split, folder in parts:
            try:
                found = ImageFolder(str(folder))
            except (FileNotFoundError, RuntimeError) as exc:
                raise GeoSANEError(f"{folder}: not an image folder (<class>/<image>): {exc}") from None
            if classes is not None and found.classes != classes:
                raise GeoSANEError(f"{folder}: classes {found.classes} differ from the other splits' {classes}")
            classes = found.classes
            for path, label in found.samples:
                image = np.asarray(found.loader(path).convert("RGB"))
                if images and image.shape != images[0].shape:
                    raise GeoSANEError(f"{path}: size {image.shape[:2]}, the others are {images[0].shape[:2]}")
                images.append(image)
                labels.append(label)
                given.append(split or "")
        self.classes = tuple(classes or ())  # type: ignore[misc]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
        return x.contiguous(), torch.tensor(labels), given if split_folders else None
