"""The prompt: the architecture to generate, built by timm, its classifier's keys, and the task model on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geosane.errors import GeoSANEError
from geosane.generation.config import GenerateConfig

__all__ = ["Prompt", "build_prompt", "head_keys", "task_model"]


@dataclass
class Prompt:
    """The prompt architecture as built: timm name, its options and its state dict (its shapes only, as meta tensors,
    once :func:`~geosane.generation.prepare` has fitted the anchors: the prompt's own weights live on as an anchor
    where the prompt is one)."""

    uri: str
    arch: str
    in_chans: int
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    head: tuple[str, ...]  # state-dict keys of the classifier
    sizes: dict[str, Any] = field(default_factory=dict)  # timm size arguments of a lightweight prompt (channels=...)


def build_prompt(config: GenerateConfig) -> Prompt:
    """The prompt architecture from timm (seeded), with its local weights if given."""
    from geosane.collection.sources import load_timm, parse_timm, timm_sizes

    if not config.prompt.startswith("timm:"):
        raise GeoSANEError(f"prompt {config.prompt!r}: expected timm:NAME[?in_chans=C&num_classes=K]")
    uri = config.prompt
    if config.prompt_weights:
        uri += ("&" if "?" in uri else "?") + f"pretrained={config.prompt_weights}"
    arch, options = parse_timm(uri)
    if "seed" not in options:
        uri += ("&" if "?" in uri else "?") + f"seed={config.seed}"
    source = load_timm(uri)
    return Prompt(
        uri=config.prompt,
        arch=arch,
        in_chans=source.in_chans or 3,
        num_classes=source.num_classes or 0,
        state_dict=source.state_dict,
        head=head_keys(arch, source.state_dict),
        sizes=timm_sizes(uri),
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


def task_model(prompt: Prompt, task: str, num_classes: int) -> nn.Module:
    """A model for ``task`` on the prompt's backbone: timm's classifier, or the backbone under a new task head.

    Args:
        prompt: the built prompt.
        task: ``classification``, ``segmentation`` or ``detection``.
        num_classes: classes of the task.

    Returns:
        The task model, freshly initialized.
    """
    import timm

    from geosane.tasks import create_model

    if task == "classification":
        return timm.create_model(prompt.arch, in_chans=prompt.in_chans, num_classes=prompt.num_classes, **prompt.sizes)
    return create_model(prompt.arch, task, prompt.in_chans, num_classes, **prompt.sizes)
