"""The DeepSpeed engine around the autoencoder: AdamW groups, the one-cycle schedule (:class:`Horizon`), fitting it to
a wall-clock budget, and the memory settings that let ZeRO-3 with offload train on a small machine."""

from __future__ import annotations

import ctypes
import hashlib
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosane.autoencoder import AutoencoderConfig
from geosane.errors import GeoSANEError
from geosane.train.config import TrainConfig, deepspeed_config

if TYPE_CHECKING:
    import torch

__all__ = [
    "Horizon",
    "build_engine",
    "extensions_dir",
    "fit_horizon",
    "parameter_groups",
    "return_large_blocks_to_the_os",
]


def extensions_dir() -> Path:
    """Where DeepSpeed's just-in-time ops (async_io for offload to disk: minutes to build) are cached: one folder per
    Python environment, since a build names the environment's paths and a cache shared by two would rebuild at
    every switch. Set ``TORCH_EXTENSIONS_DIR`` to it before the first op is built.

    Returns:
        ``~/.cache/geosane/torch_extensions/<environment hash>``.
    """
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "geosane" / "torch_extensions" / environment


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW decays matrices (>= 2-D) only: never biases, norms or embeddings of one dimension.

    Args:
        model: the autoencoder.
        weight_decay: the matrices' weight decay.

    Returns:
        AdamW's parameter groups.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def return_large_blocks_to_the_os() -> None:
    """Serve every allocation of 4 MiB or more with its own mmap, so that freeing it gives the memory back.

    glibc raises its mmap threshold up to 32 MiB after large frees, and blocks under the threshold stay in the
    process's heap once freed. ZeRO-3 gathers and frees whole parameters (19 MB at the geosane width) on every
    step: with glibc's default, two workers training geosane with NVMe offload grew to 22 GB and were killed;
    with this, they peak at 16 GB. Linux with glibc only; elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # mallopt's M_MMAP_THRESHOLD; setting it also turns off glibc's dynamic threshold
    libc.mallopt(m_mmap_threshold, 4 << 20)


def require_async_io() -> None:
    """Offload "nvme" reads and writes the optimizer's files with DeepSpeed's async_io op, built on first use
    (a few minutes) against libaio."""
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().create_op_builder("AsyncIOBuilder").is_compatible(verbose=False):
        raise GeoSANEError(
            "offload 'nvme' needs libaio for DeepSpeed's async_io op, and it is not on this machine: "
            "install it (Debian/Ubuntu: apt-get install libaio-dev) or use --offload cpu"
        )


class Horizon:
    """The learning-rate schedule as a factor of the peak: a linear warm-up over the first 10% of ``total`` steps, then
    a cosine down to zero (a one-cycle schedule). ``total`` is the run's steps, or, with a wall-clock budget, is fitted
    once the first steps are timed and again at each validation; LambdaLR saves this object's fields with the
    checkpoint, so a resumed run keeps it.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.fitted = False  # fitted to a wall-clock budget

    def __call__(self, step: int) -> float:
        """The learning rate's factor at ``step``."""
        warm = max(1, self.total // 10)
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = min(1.0, (step - warm) / max(1, self.total - warm))
        return 0.5 * (1 + math.cos(math.pi * progress))


def build_engine(config: TrainConfig, model_config: AutoencoderConfig) -> tuple[Any, Any]:
    """The autoencoder inside a DeepSpeed engine with AdamW and the one-cycle :class:`Horizon`, and the schedule;
    call on every rank.

    Args:
        config: the run's settings.
        model_config: the autoencoder's settings.

    Returns:
        The DeepSpeed engine and the learning-rate schedule.
    """
    import deepspeed
    import torch

    from geosane.autoencoder import Autoencoder

    return_large_blocks_to_the_os()
    if config.offload == "nvme":
        require_async_io()
    torch.manual_seed(config.seed)
    # under ZeRO-3 each rank builds only its partition of the parameters: the full model never sits in one process
    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(config), enabled=config.zero_stage == 3):
        model = Autoencoder(model_config)
    fused = config.use_gpu and config.offload == "none"  # one CUDA kernel for the whole update
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, fused=fused)
    horizon = Horizon(config.steps)
    # the schedule is built on DeepSpeed's own optimizer (ZeRO-3 and offload wrap the torch one, with other groups)
    engine, _, _, schedule = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda wrapped: torch.optim.lr_scheduler.LambdaLR(wrapped, horizon),
        config=deepspeed_config(config),
    )
    return engine, schedule


def fit_horizon(
    horizon: Horizon,
    config: TrainConfig,
    step: int,
    timed_steps: int,
    timed_seconds: float,
    validation_seconds: float,
    elapsed: float,
    device: Any,
) -> None:
    """Fit the schedule to the wall-clock budget. The run gets as many steps as the time left holds with the
    validations they bring, at most ``config.steps``. Every rank takes the slowest rank's figures (each rank's clock
    started a little apart), so all agree on where the run ends: a rank that stopped one step before the others would
    leave them waiting in a collective for ever.

    Args:
        horizon: the schedule, changed in place.
        config: the run's settings (``budget_minutes``, ``steps``, ``eval_every``).
        step: the step now.
        timed_steps: steps timed.
        timed_seconds: what they took, validations left out.
        validation_seconds: what a validation takes.
        elapsed: seconds of the budget gone.
        device: the engine's device (for the all-reduce).
    """
    import torch
    import torch.distributed as dist

    times = torch.tensor([timed_seconds / timed_steps, validation_seconds, elapsed], dtype=torch.float64, device=device)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
    per_step, per_validation, elapsed = (float(t) for t in times)
    left = (config.budget_minutes or 0) * 60 - elapsed
    more = int(left / (per_step + per_validation / config.eval_every)) if left > 0 else 0
    horizon.total = max(step + 1, min(config.steps, step + more))
    horizon.fitted = True  # saved with the schedule: a resumed run keeps its horizon
    if not distributed or dist.get_rank() == 0:
        print(
            f"budget {config.budget_minutes:g} min: {per_step:.3f} s a step, {horizon.total} steps in all", flush=True
        )
