"""What an initialization may use: the trial's task, its data and seed, the sweep's settings and the collection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geosane.bench.config import BenchConfig, BenchTask
from geosane.errors import GeoSANEError
from geosane.tasks import TaskData

__all__ = ["TrialContext"]


@dataclass
class TrialContext:
    """What an initialization may use: the task, its data, the trial's seed and the sweep's settings."""

    config: BenchConfig
    task: BenchTask
    data: TaskData
    seed: int
    lr: float  # the trial's learning rate (one of the task's grid)
    collection: str | None = None  # URL of the collection, read at ``version``
    version: int | None = None

    def prompt_uri(self) -> str:
        """The task's architecture as a generation prompt: its bands, classes and size options."""
        options = {"in_chans": self.data.in_chans, "num_classes": self.data.num_classes, **self.task.model_kwargs}
        text = {k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for k, v in options.items()}
        return f"timm:{self.task.arch}?" + "&".join(f"{k}={v}" for k, v in text.items())

    def generation_settings(self) -> dict[str, Any]:
        """What ``generated`` and the anchor-based baselines ask generation for: the task's anchors (default: every
        collection model of the architecture), the sweep's sampling settings, the task's data and the trial's seed."""
        return {
            "task": self.data.task,
            "anchors": self.task.anchors or f"arch={self.task.arch}",
            "collection": self.collection,
            "candidates": self.config.candidates,
            "bandwidth": self.config.bandwidth,
            "data": self.data.spec,
            "data_root": self.config.data_root,
            "seed": self.seed,
        }

    def target_model(self) -> nn.Module:
        """The task's architecture with timm's default initialization for the trial's seed."""
        from geosane.tasks import create_model

        torch.manual_seed(self.seed)
        kwargs = dict(self.task.model_kwargs)
        if self.data.task == "detection" and self.task.image_size:
            kwargs["image_size"] = self.task.image_size
        image = self.data.train[0][0].shape[-1]
        return create_model(self.task.arch, self.data.task, self.data.in_chans, self.data.num_classes, image, **kwargs)

    def records(self) -> list[Any]:
        """The collection's records at the pinned version."""
        from geosane.collection import Collection

        if not self.collection:
            raise GeoSANEError("this initialization needs a collection; the autoencoder names none")
        return Collection(self.collection, self.version).records()

    def export(self, record: Any) -> dict[str, torch.Tensor]:
        """A collection model's weights, verified, at the pinned version."""
        from geosane.collection import Collection

        return Collection(self.collection or "", self.version).export(record)
