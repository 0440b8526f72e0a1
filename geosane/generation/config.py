"""What a generation depends on (:class:`GenerateConfig`, the one home of its defaults, which the CLI, the Python
API and the bench all read) and what it returns (:class:`Generated`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import pydantic
from pydantic import Field

from geosane.config import Seed, option, settings

if TYPE_CHECKING:  # the command line reads these settings without loading torch
    import torch
    from torch import nn

    from geosane.generation.cards import GeneratedCard

__all__ = ["SAMPLINGS", "GenerateConfig", "Generated"]

SAMPLINGS = ("joint", "token", "individual")
#: Beyond this many spreads a kernel draws latents the decoder never saw: the weights are noise, not a model.
MAX_BANDWIDTH = 10.0
MAX_CANDIDATES = 1000
MAX_SEARCH_STEPS = 100


@settings(frozen=True)
class GenerateConfig:
    """Everything a generation depends on, checked when it is made (pydantic: a bad value is an error naming its
    field); recorded in every model card, and the service's request body as it is. Where things are read from
    (the collection of query anchors, the data root) is not a setting of the generation: :class:`Generator` takes
    them."""

    prompt: str = option(help="the architecture to generate", metavar="timm:NAME[?in_chans=C&num_classes=K]")
    task: Literal["classification", "segmentation", "detection"] = option(
        "classification", "the task head", ("classification", "segmentation", "detection")
    )
    prompt_weights: str | None = option(
        None, "weights for the prompt: a local file GeoSANE reads safely, or pretrained:NAME", metavar="FILE"
    )
    anchors: str = option(
        "prompt",
        "sample around the prompt itself, or collection models matching KEY=VALUE[,KEY=VALUE] (family, task, "
        "modality, name, in_chans, num_classes or a tag such as dataset or arch)",
        metavar="prompt|QUERY",
    )
    sampling: Literal["joint", "token", "individual"] = option(
        "joint", "one anchor per candidate, or anchors mixed per token or per value", SAMPLINGS
    )
    bandwidth: Annotated[float, Field(ge=0, le=MAX_BANDWIDTH, allow_inf_nan=False)] = option(
        0.05, "kernel width, in units of each latent dimension's spread over the anchor"
    )
    candidates: Annotated[int, Field(ge=1, le=MAX_CANDIDATES)] = option(4, "candidates generated and ranked")
    top_k: Annotated[int, Field(ge=1)] = option(1, "candidates kept, best first")
    data: str | None = option(
        None, "target dataset: BatchNorm re-estimation and ranking (never its test split)", metavar="DATASET"
    )
    seed: Seed = option(0, "seeds the prompt, the sampling and the new heads")
    search_steps: Annotated[int, Field(ge=0, le=MAX_SEARCH_STEPS)] = option(
        0, "gradient steps for each candidate's latents on the selection split's loss, through the decoder (needs data)"
    )
    search_lr: Annotated[float, Field(gt=0, le=MAX_BANDWIDTH, allow_inf_nan=False)] = option(
        0.05, "the latent search's step, in units of each latent dimension's spread"
    )

    @pydantic.field_validator("prompt")
    @classmethod
    def names_timm(cls, prompt: str) -> str:
        """A prompt is a timm URI (what it names is checked when it is built)."""
        if not prompt.startswith("timm:"):
            raise ValueError(f"expected timm:NAME[?in_chans=C&num_classes=K], got {prompt!r}")
        return prompt

    @pydantic.field_validator("top_k")
    @classmethod
    def within_candidates(cls, top_k: int, info: pydantic.ValidationInfo) -> int:
        """Keep at most the candidates made.

        Args:
            top_k: the value given.
            info: the fields checked before it.

        Returns:
            ``top_k``.
        """
        candidates = info.data.get("candidates")
        if candidates is not None and top_k > candidates:
            raise ValueError(f"must be at most candidates ({candidates}), got {top_k}")
        return top_k

    @pydantic.field_validator("search_steps")
    @classmethod
    def has_a_loss(cls, steps: int, info: pydantic.ValidationInfo) -> int:
        """A latent search follows the selection split's classification loss: it needs that data.

        Args:
            steps: the value given.
            info: the fields checked before it.

        Returns:
            ``steps``.
        """
        if steps and (info.data.get("data") is None or info.data.get("task") != "classification"):
            raise ValueError(
                "needs target data (--data) and a classification task: it follows the selection split's loss"
            )
        return steps


@dataclass
class Generated:
    """One generated model: the task-ready module, its weights (the prompt architecture's state dict) and its card."""

    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    card: GeneratedCard
