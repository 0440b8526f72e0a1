"""What a generation depends on (:class:`GenerateConfig`, the one home of its defaults, which the CLI, the Python
API and the bench all read) and what it returns (:class:`Generated`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geosane.config import check_seed, option
from geosane.errors import GeoSANEError

if TYPE_CHECKING:  # the command line reads these settings without loading torch
    import torch
    from torch import nn

__all__ = ["SAMPLINGS", "GenerateConfig", "Generated"]

SAMPLINGS = ("joint", "token", "individual")
#: Beyond this many spreads a kernel draws latents the decoder never saw: the weights are noise, not a model.
MAX_BANDWIDTH = 10.0
MAX_CANDIDATES = 1000
MAX_SEARCH_STEPS = 100


@dataclass(frozen=True)
class GenerateConfig:
    """Everything a generation depends on; recorded in every model card."""

    prompt: str = option(help="the architecture to generate", metavar="timm:NAME[?in_chans=C&num_classes=K]")
    task: str = option("classification", "the task head", ("classification", "segmentation", "detection"))
    prompt_weights: str | None = option(
        None, "weights for the prompt: a local file GeoSANE reads safely, or pretrained:NAME", metavar="FILE"
    )
    anchors: str = option(
        "prompt",
        "sample around the prompt itself, or collection models matching KEY=VALUE[,KEY=VALUE] (family, task, "
        "modality, name, in_chans, num_classes or a tag such as dataset or arch)",
        metavar="prompt|QUERY",
    )
    collection: str | None = option(
        None, "where query anchors come from (default: the autoencoder's collection)", metavar="URL"
    )
    sampling: str = option("joint", "one anchor per candidate, or anchors mixed per token or per value", SAMPLINGS)
    bandwidth: float = option(0.05, "kernel width, in units of each latent dimension's spread over the anchor")
    candidates: int = option(4, "candidates generated and ranked")
    top_k: int = option(1, "candidates kept, best first")
    data: str | None = option(
        None, "target dataset: BatchNorm re-estimation and ranking (never its test split)", metavar="DATASET"
    )
    data_root: str | None = option(None, "data root (default: $GEOSANE_DATA, then ../shared/data)", metavar="DIR")
    seed: int = option(0, "seeds the prompt, the sampling and the new heads")
    search_steps: int = option(
        0, "gradient steps for each candidate's latents on the selection split's loss, through the decoder (needs data)"
    )
    search_lr: float = option(0.05, "the latent search's step, in units of each latent dimension's spread")

    def validate(self) -> None:
        """Refuse a sampling, candidate count, bandwidth or seed that cannot work, naming it."""
        check_seed(self.seed)
        if self.sampling not in SAMPLINGS:
            raise GeoSANEError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.candidates < 1 or not 1 <= self.top_k <= self.candidates:
            raise GeoSANEError(
                f"need candidates >= 1 and 1 <= top_k <= candidates, got {self.candidates}, {self.top_k}"
            )
        if not 0 <= self.bandwidth <= MAX_BANDWIDTH:  # NaN fails both comparisons
            raise GeoSANEError(
                f"bandwidth must be a number between 0 and {MAX_BANDWIDTH:g} (in units of each latent dimension's "
                f"spread), got {self.bandwidth}"
            )
        if self.candidates > MAX_CANDIDATES:
            raise GeoSANEError(f"candidates must be at most {MAX_CANDIDATES}, got {self.candidates}")
        if not 0 <= self.search_steps <= MAX_SEARCH_STEPS or not 0 < self.search_lr <= MAX_BANDWIDTH:
            raise GeoSANEError(
                f"search_steps must be between 0 and {MAX_SEARCH_STEPS} and search_lr a number in (0, "
                f"{MAX_BANDWIDTH:g}], got {self.search_steps} and {self.search_lr}"
            )
        if self.search_steps and (self.data is None or self.task != "classification"):
            raise GeoSANEError(
                "search_steps needs target data (--data) and a classification task: it follows the "
                "selection split's loss"
            )


@dataclass
class Generated:
    """One generated model: the task-ready module, its weights (the prompt architecture's state dict) and its card."""

    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any]
