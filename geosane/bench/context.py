"""What an initialization may use: the trial's task, its data and seed, the sweep's settings and the collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from geosane.bench.config import BenchConfig, BenchTask
from geosane.errors import GeoSANEError
from geosane.tasks import TaskData, load_backbone

__all__ = ["TrialContext", "load_into"]


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
    options: dict[str, Any] = field(default_factory=dict)  # generation settings of a variant (generated?KEY=VALUE)

    def prompt_uri(self) -> str:
        """The task's architecture as a generation prompt: its bands, classes and size options."""
        from geosane.tasks import sized_for_input

        options = {"in_chans": self.data.in_chans, "num_classes": self.data.num_classes, **self.task.model_kwargs}
        if sized_for_input(self.task.arch, self.data.task):  # built for the data's size, as the task model is
            options["img_size"] = self.data.train[0][0].shape[-1]
        text = {k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for k, v in options.items()}
        return f"timm:{self.task.arch}?" + "&".join(f"{k}={v}" for k, v in text.items())

    def generation_settings(self) -> dict[str, Any]:
        """What ``generated`` and the anchor-based baselines ask generation for: the task's anchors (default: every
        collection model of the architecture) and prompt weights (with ``anchors: prompt``, the paper's way: the
        pretrained prompt is encoded and sampled around), the sweep's sampling settings, the task's data and the
        trial's seed."""
        return {
            "task": self.data.task,
            "prompt_weights": self.task.prompt_weights,
            "anchors": self.task.anchors or f"arch={self.task.arch}",
            "candidates": self.config.candidates,
            "bandwidth": self.config.bandwidth,
            "data": self.data.spec,
            "seed": self.seed,
            **self.options,
        }

    def generator(self, **changes: Any) -> Any:
        """The :class:`~geosane.generation.Generator` that ``generated`` runs for the trial (same anchors, settings,
        data and seed), nothing generated yet: the anchor-based baselines and ``prompt`` start from it.

        Args:
            **changes: settings that differ (``anchors``, ``prompt_weights``).

        Returns:
            The generator.
        """
        from geosane.autoencoder import Autoencoder
        from geosane.config import make
        from geosane.generation import GenerateConfig, Generator

        config = make(GenerateConfig, prompt=self.prompt_uri(), **{**self.generation_settings(), **changes})
        url = self.config.autoencoder
        autoencoder = Autoencoder.load(url)
        autoencoder.info.setdefault("url", url)
        return Generator(config, autoencoder, self.collection, self.config.data_root)

    def ready_model(self, generator: Any, weights: Mapping[str, torch.Tensor]) -> nn.Module:
        """Task-ready weights (:meth:`~geosane.generation.Generator.make_ready`'s) as the trial's model.

        Args:
            generator: the generator that made them ready.
            weights: the task model's weights.

        Returns:
            The trial's model.
        """
        if self.data.task == "detection" and self.task.image_size:  # the bench's detector takes the image size
            model = self.target_model()
            load_into(model, "detection", {k.removeprefix("detector.backbone.body."): v for k, v in weights.items()})
            return model
        model = generator.prompt.task_model(self.data.task, generator.num_classes)
        model.load_state_dict(weights, strict=True)
        return model

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


def load_into(model: nn.Module, task: str, state_dict: dict[str, torch.Tensor]) -> None:
    """A classifier's weights into a task model: all of it for classification, the backbone under a new head else.

    Args:
        model: a task model.
        task: its task.
        state_dict: a timm classifier's weights.
    """
    if task == "classification":
        model.load_state_dict(state_dict, strict=True)
    else:
        backbone: Any = model.backbone  # every task model names its timm feature extractor so
        load_backbone(backbone, state_dict)
