"""The prompt: the architecture to generate, built by timm, its classifier's keys, and the task model on it (the
first step of a generation, after its settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geosane.generation.config import GenerateConfig

__all__ = ["Prompt", "build_prompt", "head_keys"]


@dataclass
class Prompt:
    """The prompt architecture as built: its timm name and options, its tensors' shapes and dtypes (meta tensors:
    the prompt's own weights are returned beside it, and live on only as an anchor where the prompt is one) and its
    classifier's keys."""

    uri: str
    arch: str
    in_chans: int
    num_classes: int
    shapes: dict[str, torch.Tensor]  # meta tensors
    head: tuple[str, ...]  # state-dict keys of the classifier
    sizes: dict[str, Any] = field(default_factory=dict)  # timm size arguments of a lightweight prompt (channels=...)

    def task_model(self, task: str, num_classes: int) -> nn.Module:
        """A fresh model for ``task`` on the prompt's backbone: timm's classifier, or the backbone under a new head.

        Args:
            task: ``classification``, ``segmentation`` or ``detection``.
            num_classes: classes of the task.

        Returns:
            The task model, initialized by the global generator (callers seed it).
        """
        import timm

        from geosane.tasks import create_model

        if task == "classification":
            return timm.create_model(self.arch, in_chans=self.in_chans, num_classes=self.num_classes, **self.sizes)
        return create_model(self.arch, task, self.in_chans, num_classes, **self.sizes)


def build_prompt(config: GenerateConfig) -> tuple[Prompt, dict[str, torch.Tensor]]:
    """The prompt architecture from timm (seeded by the generation's seed unless its URI names one), with the
    prompt weights if given.

    Args:
        config: the generation's settings (``prompt``, ``prompt_weights``, ``seed``).

    Returns:
        The prompt, and its own weights.

    Raises:
        GeoSANEError: an unknown architecture, option or weights that do not fit.
    """
    from geosane.collection.sources import load_timm, parse_timm, timm_sizes

    spec = parse_timm(config.prompt)
    built = spec.with_options(pretrained=config.prompt_weights)
    if "seed" not in spec.options:
        built = built.with_options(seed=config.seed)
    source = load_timm(str(built))
    return (
        Prompt(
            uri=config.prompt,
            arch=spec.name,
            in_chans=source.in_chans or 3,
            num_classes=source.num_classes or 0,
            shapes={k: torch.empty_like(v, device="meta") for k, v in source.state_dict.items()},
            head=head_keys(spec.name, source.state_dict),
            sizes=timm_sizes(spec),
        ),
        source.state_dict,
    )


def head_keys(arch: str, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The classifier's state-dict keys, as timm's pretrained config names the classifier module(s).

    Args:
        arch: a timm architecture.
        state_dict: its state dict.

    Returns:
        The keys.
    """
    import timm

    classifier = timm.models.get_pretrained_cfg(arch)
    names = (classifier.classifier if classifier else None) or "head"
    prefixes = (names,) if isinstance(names, str) else tuple(names)
    return tuple(k for k in state_dict if any(k.startswith(p + ".") for p in prefixes))
