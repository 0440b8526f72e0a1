"""What every dataset shares: the data root, split files, and normalization statistics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, Sequence

import numpy as np
import torch

from geosane.errors import GeoSANEError

__all__ = ["BandsAndClasses", "Dataset", "SPLITS", "Samples", "data_root", "stratified_split"]

SPLITS = ("train", "selection", "test")
SPLIT_DIR = Path(__file__).parent / "splits"
#: Fractions of each class (or stratum) that go to train / selection / test when a split is made.
FRACTIONS = (0.7, 0.1, 0.2)


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: an explicit argument, then ``$GEOSANE_DATA``, then ``../shared/data`` beside the project."""
    if explicit:
        return Path(explicit)
    if os.environ.get("GEOSANE_DATA"):
        return Path(os.environ["GEOSANE_DATA"])
    for project in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = project.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise GeoSANEError("no data root: pass --data-root, set $GEOSANE_DATA, or place the data in ../shared/data")


def stratified_split(ids: Sequence[str], strata: Sequence[int], seed: int) -> dict[str, list[str]]:
    """Seeded split of ``ids`` into train/selection/test with the same fractions within every stratum.

    Args:
        ids: sample ids.
        strata: a stratum per id (a class).
        seed: seeds the shuffle.

    Returns:
        Sorted ids per split.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    ids_array, strata_array = np.asarray(ids), np.asarray(strata)
    for stratum in np.unique(strata_array):
        members = ids_array[strata_array == stratum]
        members = members[rng.permutation(len(members))]
        n_train = int(round(FRACTIONS[0] * len(members)))
        n_selection = int(round(FRACTIONS[1] * len(members)))
        splits["train"] += members[:n_train].tolist()
        splits["selection"] += members[n_train : n_train + n_selection].tolist()
        splits["test"] += members[n_train + n_selection :].tolist()
    return {name: sorted(members) for name, members in splits.items()}


@dataclass
class Samples:
    """One split in memory: inputs ``x`` (float32, normalized), targets ``y``, and the sample ids."""

    x: torch.Tensor
    y: torch.Tensor | list
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class Described(Protocol):
    """Anything that names its input bands and its classes."""

    @property
    def bands(self) -> Sequence[str]: ...  # noqa: D102

    @property
    def classes(self) -> Sequence[str]: ...  # noqa: D102


class BandsAndClasses:
    """What a model needs to know of its data, counted from its bands and classes (a dataset, or a task's data)."""

    @property
    def in_chans(self: Described) -> int:
        """Bands of an input."""
        return len(self.bands)

    @property
    def num_classes(self: Described) -> int:
        """Classes of the task."""
        return len(self.classes)


class Dataset(BandsAndClasses):
    """Base class: subclasses list their samples and read them; splits and statistics are shared."""

    name: ClassVar[str]
    task: ClassVar[str]  # classification | segmentation | detection
    modality: ClassVar[str]  # rgb | multispectral | sar
    bands: ClassVar[tuple[str, ...]]
    classes: ClassVar[tuple[str, ...]]
    seed: ClassVar[int] = 0
    resolution_m: ClassVar[float] = 10.0  # ground size of a pixel
    sentinel2_dn: ClassVar[bool] = False  # raw Sentinel-2 L1C digital numbers (reflectance x 10,000), not 8-bit

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def spec(self) -> str:
        """How a config names this dataset with its options (``cloudmask?holdout=landsat5``)."""
        return self.name

    def image_keys(self, sample_id: str) -> tuple[str, ...]:
        """What identifies the images behind one sample, so that held-out checks can compare datasets.

        The default is the dataset itself: its splits come from the same scenes, so a model that trained on any of
        them has seen "this dataset". Datasets whose samples are separate images say so per sample (EuroSAT patches,
        shared by the RGB and multispectral versions), or per scene (cloud-mask sensors)."""
        return (self.name,)

    @property
    def split_file(self) -> Path:
        """Where the written-down splits live."""
        return SPLIT_DIR / f"{self.name}.json"

    # subclasses implement these two
    def samples(self) -> tuple[list[str], list[int]]:
        """All sample ids and a stratum per sample (the class, or a dominant class)."""
        raise NotImplementedError

    def read(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor | list]:
        """Raw inputs ``[N, C, H, W]`` float32 and targets for ``ids``."""
        raise NotImplementedError

    # shared machinery
    def make_splits(self) -> dict:
        """Compute the seeded splits and the train-split normalization statistics (what the split file holds)."""
        ids, strata = self.samples()
        return self.with_statistics(stratified_split(ids, strata, self.seed))

    def with_statistics(self, splits: dict[str, list[str]]) -> dict:
        """A split file's content: the splits plus per-band mean and std of the train split."""
        x, _ = self.read(splits["train"])
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        return {
            "dataset": self.name,
            "seed": self.seed,
            "fractions": list(FRACTIONS),
            "mean": mean,
            "std": std,
            **splits,
        }

    def splits(self) -> dict:
        """The written-down splits; made (and written) on first use for data the project has not seen."""
        if not self.split_file.exists():
            data = self.make_splits()
            self.split_file.parent.mkdir(parents=True, exist_ok=True)
            self.split_file.write_text(json.dumps(data, indent=0) + "\n")
        return json.loads(self.split_file.read_text())

    def load_ids(self, split: str, limit: int | None = None) -> list[str]:
        """The sample ids :meth:`load` reads for ``split`` and ``limit``.

        Args:
            split: ``train``, ``selection`` or ``test``.
            limit: at most this many (a seeded subset); None: all.

        Returns:
            The ids.

        Raises:
            GeoSANEError: an unknown split.
        """
        if split not in SPLITS:
            raise GeoSANEError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        ids = self.splits()[split]
        if limit is not None and limit < len(ids):
            order = np.random.default_rng(self.seed).permutation(len(ids))[:limit]
            ids = [ids[i] for i in sorted(order)]
        return ids

    def load(self, split: str, limit: int | None = None) -> Samples:
        """The samples of split ``split`` in memory, normalized with the train statistics; ``limit`` keeps a
        stratified-ish prefix of a seeded shuffle (for tiny test configs).

        Args:
            split: ``train``, ``selection`` or ``test``.
            limit: at most this many samples; None: all.

        Returns:
            Inputs, targets and ids.
        """
        ids = self.load_ids(split, limit)
        info = self.splits()
        x, y = self.read(ids)
        mean, std = torch.tensor(info["mean"]).view(-1, 1, 1), torch.tensor(info["std"]).view(-1, 1, 1)
        if isinstance(x, list):  # images of different sizes (detection): a list of [C, H, W] tensors
            return Samples([(image - mean) / std for image in x], y, ids)
        return Samples((x - mean) / std, y, ids)

    def describe(self) -> dict:
        """What a collection records of a dataset a model trained on."""
        return {
            "name": self.name,
            "task": self.task,
            "modality": self.modality,
            "bands": list(self.bands),
            "classes": list(self.classes),
        }
