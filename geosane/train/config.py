"""A training run's settings (``sweeps/train-*.yaml``), and what they make of DeepSpeed's configuration."""

from __future__ import annotations

import math
import tempfile
from dataclasses import field, replace
from pathlib import Path
from typing import Any

from geosane.autoencoder import AutoencoderConfig
from geosane.autoencoder.losses import LossConfig
from geosane.config import Seed, load_config, option, settings
from geosane.errors import GeoSANEError

__all__ = ["OFFLOAD_DEVICES", "TrainConfig", "deepspeed_config", "nvme_folder", "resume_key"]

OFFLOAD_DEVICES = ("none", "cpu", "nvme")


NVME_SUB_GROUP = 50_000_000


@settings
class TrainConfig:
    """Everything a training run depends on; recorded with every checkpoint and the final model."""

    collection: str = option("", "the collection to train on (path, file:// or s3:// URL)", metavar="URL")
    storage: str = option("runs", "where runs are stored")
    name: str = option("autoencoder", "the run's name; the same name resumes it")
    model: str = option("tiny", "a named autoencoder size: tiny, small, compact, base or geosane ...", metavar="SIZE")
    autoencoder: dict[str, Any] = field(
        default_factory=dict
    )  # ... with these settings changed (d_model, latent_dim, ...)
    window: int | None = None  # overrides the model size's window
    workers: int = option(2, "Ray Train workers")
    use_gpu: bool = option(False, "one GPU per worker")
    placement: str = "PACK"  # Ray Train's placement of the workers: PACK (fewest nodes) or SPREAD (across nodes)
    zero_stage: int = option(2, "DeepSpeed ZeRO stage", (0, 1, 2, 3))
    bf16: bool = option(False, "bf16 mixed precision")
    offload: str = option(
        "none",
        "optimizer states to CPU memory (--offload) or to files on a local disk (--offload nvme: under nvme_path, "
        "ZeRO-3 only, needs libaio)",
        OFFLOAD_DEVICES,
    )
    nvme_path: str = ""  # a fast local disk for offload "nvme" (default: <temp>/geosane-nvme); each run its own folder
    steps: int = option(200, "the schedule's length, or its most steps with a budget")
    budget_minutes: float | None = option(None, "fit the schedule to this wall-clock budget of the loop")
    log_every: int = 10  # a progress line every this many steps
    batch_size: int = 8  # windows per worker per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    checkpoint_every: int = 50
    eval_every: int = 50
    val_fraction: float = 0.2
    noise: float = 0.1
    erase_probability: float = 0.0
    permute_hidden_units: bool = False  # each pass sees models with their MLP hidden units permuted (same function)
    view_shift: float = 0.25  # the second view is a window up to this fraction of a window away from the first's
    gamma: float = LossConfig.gamma
    temperature: float = LossConfig.temperature
    max_failures: int = 1
    seed: Seed = 0
    # what neither trains nor validates, reported apart: {family: [convnext, vision_transformer]} (YAML only)
    holdout: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Settings from a YAML file (``sweeps/train-*.yaml``); ``overrides`` that are not None win.

        Args:
            path: a training YAML file.
            **overrides: settings that win over the file where not None.

        Returns:
            The settings.
        """
        return replace(load_config(path, cls), **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
        """Refuse settings that cannot train, naming them, before anything starts."""
        if self.placement not in ("PACK", "SPREAD"):
            raise GeoSANEError(f"placement must be PACK or SPREAD, got {self.placement!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise GeoSANEError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not self.collection:
            raise GeoSANEError("no collection given (--collection URL)")
        if self.offload not in OFFLOAD_DEVICES:
            raise GeoSANEError(f"offload must be one of {OFFLOAD_DEVICES}, got {self.offload!r}")
        if self.offload == "nvme" and self.zero_stage != 3:
            raise GeoSANEError(f"offload 'nvme' needs zero_stage 3, got {self.zero_stage}")
        if self.workers < 1:
            raise GeoSANEError(f"workers must be >= 1 (Ray Train workers), got {self.workers}")
        for name in ("lr", "weight_decay", "noise", "gamma", "temperature", "view_shift", "erase_probability"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise GeoSANEError(f"{name} must be a finite number >= 0, got {value}")
        if self.lr == 0 or self.temperature == 0 or not 0 < self.val_fraction < 1:
            raise GeoSANEError(
                f"lr and temperature must be > 0 and val_fraction in (0, 1), got {self.lr}, {self.temperature}, "
                f"{self.val_fraction}"
            )
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise GeoSANEError("steps, checkpoint_every and log_every must be >= 1")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise GeoSANEError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        AutoencoderConfig.named(self.model, **self.autoencoder)  # unknown sizes or settings fail here, named

    def autoencoder_config(self, token_size: int, mode: str) -> AutoencoderConfig:
        """The network this run trains, for a collection's tokens.

        Args:
            token_size: the collection's values per token.
            mode: the collection's tokenizer mode.

        Returns:
            The autoencoder settings.
        """
        return AutoencoderConfig.named(
            self.model, token_size=token_size, window=self.window, mode=mode, **self.autoencoder
        )


def resume_key(config: TrainConfig) -> dict[str, Any]:
    """Settings a checkpoint can only be resumed with unchanged (shapes and sharding of the saved state)."""
    return {
        "model": config.model,
        "autoencoder": config.autoencoder,
        "window": config.window,
        "workers": config.workers,
        "zero_stage": config.zero_stage,
        "bf16": config.bf16,
        "offload": config.offload,
        "holdout": config.holdout,
    }


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's configuration for the run's settings."""
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.use_gpu:  # reduce gradients on a side CUDA stream while the backward pass goes on
        zero.update(overlap_comm=True, contiguous_gradients=True)
    extra: dict[str, Any] = {}
    if config.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    elif config.offload == "nvme":  # ZeRO-Infinity: fp32 master weights and Adam moments live in files
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": nvme_folder(config), "pin_memory": False}
        zero["sub_group_size"] = NVME_SUB_GROUP
        extra["aio"] = {"block_size": 1 << 20, "queue_depth": 8, "single_submit": False, "overlap_events": True}
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": config.bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **extra,
    }


def nvme_folder(config: TrainConfig) -> str:
    """Where offload "nvme" keeps this run's optimizer files (DeepSpeed adds a folder per rank)."""
    root = config.nvme_path or str(Path(tempfile.gettempdir()) / "geosane-nvme")
    return str(Path(root) / config.name)
