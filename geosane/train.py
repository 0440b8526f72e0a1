"""Train the weight autoencoder with Ray Train and DeepSpeed ZeRO, fed by Ray Data from a collection.

Every worker runs a DeepSpeed engine (ZeRO stage 0-3, bf16 optional, optimizer offload optional, gradient
accumulation, AdamW with weight decay on >= 2-D tensors only, OneCycle) around a :class:`geosane.Autoencoder`.
Every ``checkpoint_every`` steps all ranks save their ZeRO shards and report them as one Ray Train checkpoint in
the run's storage (``geosane.checkpoints``); a restarted worker group (``FailureConfig``) and a re-run with the same
``--name`` resume from the latest one. Validation encodes and decodes the held-out models whole, exactly as
``Autoencoder.encode`` / ``decode`` do for a user. At the end the consolidated fp32 autoencoder is saved to
``<storage>/<name>/final`` (``Autoencoder.load`` reads it). TensorBoard logs go to ``<storage>/<name>/tensorboard``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosane import checkpoints, storage
from geosane.autoencoder import AutoencoderConfig
from geosane.config import load_config, settings
from geosane.errors import GeoSANEError
from geosane.views import ViewConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "TrainConfig",
    "Horizon",
    "fit_horizon",
    "progress_line",
    "run_training",
    "build_engine",
    "deepspeed_config",
    "parameter_groups",
    "training_plan",
    "training_views",
    "SPLIT",
    "STEPS_PER_PASS",
    "StepMeter",
    "nvme_folder",
    "remove_offload_files",
    "return_large_blocks_to_the_os",
]

log = logging.getLogger(__name__)
PREFETCH_BATCHES = 4  # batches Ray Data prepares ahead of the step that needs them
CALIBRATION_STEPS = 20  # with a wall-clock budget, the steps timed before the schedule's length is first fitted
STEPS_PER_PASS = 200  # a pass over the training models holds at least this many steps (each pass restarts Ray Data)
SHUFFLE_BATCHES = 8  # each worker shuffles its windows in a buffer of this many batches (blocks are one model each)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# with offload "nvme", ZeRO-3 brings the optimizer states into memory one sub-group of parameters at a time. DeepSpeed's
# default (1e9) makes one group of a whole 0.9B model, so at start-up every state sat in memory at once.
NVME_SUB_GROUP = 50_000_000


@settings
class TrainConfig:
    """Everything a training run depends on; recorded with every checkpoint and the final model."""

    collection: str = ""
    storage: str = "runs"
    name: str = "autoencoder"
    model: str = "tiny"  # a named size (geosane.autoencoder.SIZES) ...
    autoencoder: dict[str, Any] = field(
        default_factory=dict
    )  # ... with these settings changed (d_model, latent_dim, ...)
    window: int | None = None  # overrides the model size's window
    workers: int = 2
    use_gpu: bool = False
    placement: str = "PACK"  # Ray Train's placement of the workers: PACK (fewest nodes) or SPREAD (across nodes)
    zero_stage: int = 2
    bf16: bool = False
    offload: str = "none"  # optimizer states: "none", "cpu", or "nvme" (files under nvme_path; ZeRO-3 only)
    nvme_path: str = ""  # a fast local disk for offload "nvme" (default: <temp>/geosane-nvme); each run its own folder
    steps: int = 200  # the schedule's length, or its most steps with budget_minutes
    budget_minutes: float | None = None  # wall-clock budget of the loop: the schedule is fitted to it after a few steps
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
    gamma: float = 0.05
    temperature: float = 0.1
    max_failures: int = 1
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Settings from a YAML file (``sweeps/train-*.yaml``); ``overrides`` that are not None win."""
        return replace(load_config(path, cls), **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
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
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise GeoSANEError("steps, checkpoint_every and log_every must be >= 1")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise GeoSANEError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        AutoencoderConfig.named(self.model, **self.autoencoder)  # unknown sizes or settings fail here, named

    def autoencoder_config(self, token_size: int, mode: str) -> AutoencoderConfig:
        """The network this run trains, for a collection's tokens."""
        return AutoencoderConfig.named(
            self.model, token_size=token_size, window=self.window, mode=mode, **self.autoencoder
        )


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
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


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW decays matrices (>= 2-D) only: never biases, norms or embeddings of one dimension."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------ the worker loop


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
    }


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
        warm = max(1, self.total // 10)
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = min(1.0, (step - warm) / max(1, self.total - warm))
        return 0.5 * (1 + math.cos(math.pi * progress))


def build_engine(config: TrainConfig, model_config: AutoencoderConfig) -> tuple[Any, Any]:
    """The autoencoder inside a DeepSpeed engine with AdamW and the one-cycle :class:`Horizon`, and the schedule;
    call on every rank."""
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


class StepMeter:
    """Wall time, data wait and tokens of each step. Throughput counts from the end of the first step, so the
    start-up (the data pipeline's first batch, allocation) is reported apart from the steady state."""

    def __init__(self) -> None:
        self.began = self.step_began = self.waiting_since = time.perf_counter()
        self.tokens, self.wait = 0, 0.0  # this step's
        self.startup: float | None = None
        self.steady_began, self.steady_tokens, self.steady_wait = 0.0, 0, 0.0

    def fetching(self) -> None:
        self.waiting_since = time.perf_counter()

    def next_step(self) -> None:
        """After evaluation, logging and checkpoints: the next step's clock starts now."""
        self.step_began = self.waiting_since = time.perf_counter()

    def fetched(self) -> None:
        self.wait += time.perf_counter() - self.waiting_since

    def step_done(self) -> dict[str, float]:
        now = time.perf_counter()
        step = {"step_seconds": now - self.step_began, "step_data_wait_seconds": self.wait}
        if self.startup is None:  # the first step: start-up
            self.startup, self.steady_began = now - self.began, now
        else:
            self.steady_tokens += self.tokens
            self.steady_wait += self.wait
        steady = now - self.steady_began
        self.tokens, self.wait = 0, 0.0
        return {
            **step,
            "startup_seconds": self.startup,
            "tokens_per_s": self.steady_tokens / steady if steady else 0.0,
            "data_wait_fraction": self.steady_wait / steady if steady else 0.0,
        }


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from deepspeed.utils import safe_get_full_fp32_param
    from torch.utils.tensorboard import SummaryWriter

    from geosane.autoencoder import Autoencoder, training_losses
    from geosane.collection import Collection
    from geosane.losses import LossConfig

    config = TrainConfig(**loop_config["train"])
    model_config = AutoencoderConfig(**loop_config["model"])
    torch.set_num_threads(1)  # one core per worker; more only oversubscribes the machine
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    engine, schedule = build_engine(config, model_config)
    device = engine.device
    loss_config = LossConfig(config.gamma, config.temperature)
    # every rank validates every held-out model (under ZeRO-3 each forward pass is a collective)
    collection = Collection(config.collection, loop_config["collection_version"])
    held_out = [collection.tokens(model_id) for model_id in loop_config["val"]]

    step, val_start = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = checkpoints.verify(Path(folder), world, resume_key(config))
            engine.load_checkpoint(folder, tag=checkpoints.TAG)
        step, val_start = saved["step"], saved["val_reconstruction_start"]
        if rank == 0:
            log.info("resumed from step %d", step)

    tensorboard = Path(tempfile.mkdtemp(prefix="geosane-tensorboard-"))
    writer = SummaryWriter(str(tensorboard)) if rank == 0 else None
    run = loop_config["run"]
    train_shard = ray.train.get_dataset_shard("train")

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in batch.items()}

    validation_seconds: list[float] = []

    def validate() -> float:
        """The held-out models' mean reconstruction error, each encoded and decoded whole as a user would."""
        began = time.perf_counter()
        engine.eval()
        errors = [engine.module.reconstruction_error(tokens, network=engine) for tokens in held_out]
        engine.train()
        validation_seconds.append(time.perf_counter() - began)
        return sum(errors) / len(errors)

    loop_began = time.perf_counter()
    if val_start is None:
        val_start = validate()  # the held-out models before any training: the yardstick for progress
    metrics: dict[str, Any] = {"step": step, "val_reconstruction_start": val_start}
    meter = StepMeter()
    horizon: Horizon = schedule.lr_lambdas[0]
    first_step = step
    while step < horizon.total:
        meter.fetching()
        for batch in train_shard.iter_torch_batches(
            batch_size=config.batch_size,
            drop_last=True,
            prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=SHUFFLE_BATCHES * config.batch_size,
            local_shuffle_seed=config.seed + rank,
        ):
            meter.fetched()
            batch = to_device(batch)
            losses = training_losses(engine, batch, loss_config, config.bf16)
            engine.backward(losses["loss"])
            engine.step()
            meter.tokens += int(batch["valid"].gt(0).sum()) * world
            if not engine.is_gradient_accumulation_boundary() and config.grad_accum > 1:
                meter.fetching()
                continue
            step += 1
            if step == first_step + 1:  # budget timing starts after the first step (Ray Data's start-up)
                timing_began, validated_before = time.perf_counter(), sum(validation_seconds)
            metrics = {
                "step": step,
                "loss": float(losses["loss"]),
                "reconstruction": float(losses["reconstruction"]),
                "contrastive": float(losses["contrastive"]),
                "lr": schedule.get_last_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                **meter.step_done(),
                "val_reconstruction_start": val_start,
            }
            evaluate = step % config.eval_every == 0 or step == horizon.total
            if evaluate:
                metrics["val_reconstruction"] = validate()
            # with a budget: fit the schedule once the first steps are timed, and again at every validation (the
            # steady pace is only known once Ray Data's pipeline is full)
            calibrated = step == first_step + 1 + CALIBRATION_STEPS and not horizon.fitted
            refit = evaluate and horizon.fitted and first_step + 1 < step < horizon.total
            if config.budget_minutes and (calibrated or refit):
                fit_horizon(
                    horizon,
                    config,
                    step,
                    step - first_step - 1,
                    time.perf_counter() - timing_began - (sum(validation_seconds) - validated_before),
                    max(validation_seconds),
                    time.perf_counter() - loop_began,
                    device,
                )
            if rank == 0 and (step % config.log_every == 0 or evaluate):
                elapsed = time.perf_counter() - loop_began
                per_step = (elapsed - sum(validation_seconds)) / (step - first_step)  # validations are rare
                line = progress_line(metrics, horizon.total, elapsed, per_step)
                print(line, flush=True)
                progress = {"step": step, "total": horizon.total, "line": line}
                storage.write_bytes(storage.join(run, PROGRESS), json.dumps(progress).encode())
            if writer:
                for key, value in metrics.items():
                    if key != "step":
                        writer.add_scalar(key, value, step)
            # Ray Train's report is a barrier that waits for the controller's poll (every 2 s): report only when
            # evaluating or checkpointing, while TensorBoard gets every step
            if step % config.checkpoint_every == 0 or step == horizon.total:
                if writer:
                    writer.flush()
                    storage.upload(tensorboard, storage.join(run, "tensorboard"))
                save_and_report(engine, config, model_config, metrics, rank)
            elif evaluate:
                ray.train.report(metrics)
            if step >= horizon.total:
                break
            meter.next_step()

    if metrics.keys() == {"step", "val_reconstruction_start"}:  # resumed a finished run: report where it stands
        ray.train.report({**metrics, "val_reconstruction": validate()})

    # the consolidated fp32 model for generation: each full parameter is gathered by all ranks (a collective
    # under ZeRO) one at a time, and only rank 0 keeps them
    state = {}
    for name, parameter in engine.module.named_parameters():
        full = safe_get_full_fp32_param(parameter)
        if rank == 0:
            state[name] = (full if full is not None else parameter).detach().float().cpu().contiguous()
    if rank == 0:
        info = {
            "train": asdict(config),
            "collection": config.collection,
            "collection_version": loop_config["collection_version"],
            "step": step,
            "metrics": metrics,
        }
        with torch.device("meta"):
            final = Autoencoder(model_config, info)
        final.load_state_dict(state, assign=True)
        final.save(storage.join(run, "final"))
    if writer:
        writer.close()
        storage.upload(tensorboard, storage.join(run, "tensorboard"))
    shutil.rmtree(tensorboard, ignore_errors=True)  # uploaded: the local copy was only a staging folder
    remove_offload_files(config)


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
    """Fit the schedule to the wall-clock budget: ``timed_steps`` steps took ``timed_seconds`` (validations left out),
    a validation takes ``validation_seconds``, and ``elapsed`` seconds of the budget are gone. The run gets as many
    steps as the time left holds with the validations they bring, at most ``config.steps``. Every rank takes the
    slowest rank's figures (each rank's clock started a little apart), so all agree on where the run ends: a rank
    that stopped one step before the others would leave them waiting in a collective for ever."""
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


def progress_line(metrics: dict[str, Any], total: int, elapsed: float, seconds_per_step: float) -> str:
    """``step 120/1450  loss 0.1234  reconstruction 0.1200  val 0.3400  2,345 tokens/s  4.1 min, 12.3 left``."""
    step = metrics["step"]
    left = seconds_per_step * (total - step) / 60
    val = f"  val {metrics['val_reconstruction']:.4f}" if "val_reconstruction" in metrics else ""
    return (
        f"step {step}/{total}  loss {metrics['loss']:.4f}  reconstruction {metrics['reconstruction']:.4f}{val}  "
        f"{metrics['tokens_per_s']:,.0f} tokens/s  {elapsed / 60:.1f} min, {left:.1f} left"
    )


def remove_offload_files(config: TrainConfig) -> None:
    """Offload "nvme" leaves the optimizer's swap files behind; a finished run has no more use for them."""
    if config.offload == "nvme":
        shutil.rmtree(nvme_folder(config), ignore_errors=True)


def save_and_report(
    engine: Any, config: TrainConfig, model_config: AutoencoderConfig, metrics: dict[str, Any], rank: int
) -> None:
    """All ranks save their DeepSpeed shards and report them; Ray Train merges them into one checkpoint."""
    import ray.train

    progress = {
        "step": metrics["step"],
        "val_reconstruction_start": metrics["val_reconstruction_start"],
        "autoencoder": asdict(model_config),
    }
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=checkpoints.TAG)
        checkpoints.record(Path(folder), rank, resume_key(config), progress)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


# ------------------------------------------------------------------------------ the driver


def training_views(config: TrainConfig, model_config: AutoencoderConfig, train_ids: list[str]) -> ViewConfig:
    """The windows and views a run trains on: the model's window, the run's augmentation, and enough windows per
    model that one pass over small collections lasts ``STEPS_PER_PASS`` steps (each pass restarts Ray Data)."""
    from geosane.token_stream import windows_per_model_for

    views = ViewConfig(
        window=model_config.window,
        noise=config.noise,
        erase_probability=config.erase_probability,
        permute_hidden_units=config.permute_hidden_units,
        shift=config.view_shift,
    )
    global_batch = config.batch_size * config.workers * config.grad_accum
    windows = windows_per_model_for(
        config.collection, train_ids, views, min(config.steps, STEPS_PER_PASS) * global_batch
    )
    return replace(views, windows_per_model=windows)


SPLIT = "split.json"  # in the run: the collection, its version, the split and the settings a resume must share
PROGRESS = "progress.json"  # in the run: the last progress line, which the driver shows as a progress bar


def training_plan(config: TrainConfig, run: str) -> dict[str, Any]:
    """What the run ``run`` trains on: the collection at one version, the lineage split, and the settings a
    resume must share. A new run plans them now; a resumed run reads its own plan back, and a resume that asks for
    another collection or other settings is refused here, before Ray starts and without changing the run."""
    from geosane.collection import Collection
    from geosane.token_stream import split_models

    saved_url = storage.join(run, SPLIT)
    if storage.exists(saved_url):
        try:
            saved = json.loads(storage.read_bytes(saved_url))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeoSANEError(f"{saved_url}: not valid JSON ({exc}); use another --name to start afresh") from exc
        if not isinstance(saved, dict) or not {"collection", "train", "val"} <= saved.keys():
            raise GeoSANEError(f"{saved_url}: not a GeoSANE run plan; use another --name to start afresh")
        if saved["collection"] != config.collection:
            raise GeoSANEError(
                f"run {run} trains on {saved['collection']}, not {config.collection}; "
                "use another --name to start afresh"
            )
        if saved.get("resume_key", resume_key(config)) != resume_key(config):
            raise GeoSANEError(
                f"run {run} was started with {saved['resume_key']}, this run has {resume_key(config)}; "
                "use another --name to start afresh"
            )
        log.info("resuming %s: collection %s at version %s", run, saved["collection"], saved.get("collection_version"))
        return {"collection_version": None, "val_lineages": [], **saved}
    collection = Collection(config.collection)
    if collection.dataset() is None:
        if collection.exists():
            raise GeoSANEError(
                f"{collection.url}: training reads collections in the table format; convert this one with "
                f"`geosane collection migrate {collection.url}`"
            )
        raise GeoSANEError(f"{collection.url}: no collection here")
    version = collection.version
    records = Collection(config.collection, version).records()
    split = split_models(records, config.val_fraction, config.seed)
    return {
        "collection": config.collection,
        "collection_version": version,
        **asdict(split),
        "resume_key": resume_key(config),
    }


@dataclass
class FinishedRun:
    """What :func:`run_training` returns for a run that had finished already: its last metrics, as Ray's result."""

    metrics: dict[str, Any]


def run_training(config: TrainConfig, progress: bool = True) -> Any:
    """Train (or resume) the run ``config.name``: Ray Data windows of the collection's training models feed a Ray
    Train worker group of DeepSpeed engines; returns Ray Train's result (``.metrics`` holds the last report)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from geosane.collection import Collection
    from geosane.token_stream import ModelSplit, window_dataset

    config.validate()
    config = replace(config, collection=storage.absolute(config.collection))  # the workers read it too
    run = storage.join(storage.absolute(config.storage), config.name)
    plan = training_plan(config, run)  # every refusal comes here, before Ray starts and before anything is written
    final = storage.join(run, "final", "config.json")
    if storage.exists(storage.join(run, SPLIT)) and storage.exists(final):
        info = json.loads(storage.read_bytes(final)).get("info", {})
        asked = {k: getattr(config, k) for k in ("steps", "budget_minutes")}
        if {k: info.get("train", {}).get(k) for k in asked} == asked:  # finished as asked: nothing to resume
            log.info("run %s finished at step %s; its final model is in %s/final", config.name, info.get("step"), run)
            return FinishedRun({"step": info.get("step"), **info.get("metrics", {})})
    collection = Collection(config.collection, plan["collection_version"])
    records = collection.records()
    model_config = config.autoencoder_config(records[0].token_size, records[0].mode)
    split = ModelSplit(plan["train"], plan["val"], plan["val_lineages"])
    views = training_views(config, model_config, split.train)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # a cluster (ray job submit): use what it has
            ray.init(include_dashboard=False)
        else:  # one machine: the workers take a CPU each and Ray Data needs CPUs beside them to feed them
            ray.init(
                num_cpus=max(os.cpu_count() or 1, config.workers + 2),
                include_dashboard=False,
                log_to_driver=log.isEnabledFor(logging.DEBUG),  # the workers' own lines with -v; a bar otherwise
            )
    storage_root = storage.absolute(config.storage)
    if not storage.exists(storage.join(run, SPLIT)):
        storage.write_bytes(storage.join(run, SPLIT), json.dumps(plan, indent=1).encode())
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "train": asdict(config),
            "model": asdict(model_config),
            "run": run,
            "val": split.val,
            "collection_version": plan["collection_version"],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, placement_strategy=config.placement
        ),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=storage_root,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={
            "train": window_dataset(
                config.collection, split.train, views, seed=config.seed, version=plan["collection_version"]
            )
        },
    )
    stop = threading.Event()
    follower = threading.Thread(target=follow_progress, args=(run, config.name, stop, progress), daemon=True)
    follower.start()
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours with its own message
        cause = geosane_cause(exc)
        if cause is None:
            raise
        raise GeoSANEError(cause.args[0] if cause.args else str(cause)) from exc
    finally:
        stop.set()
        follower.join()


def follow_progress(run: str, name: str, stop: threading.Event, enabled: bool) -> None:
    """A progress bar in the driver over the steps rank 0 reports in ``run/progress.json`` (wherever ``run`` is)."""
    from tqdm import tqdm

    bar = tqdm(desc=f"train {name}", unit="step", disable=not enabled)
    shown = None
    while True:
        stopping = stop.wait(2.0)
        try:
            progress = json.loads(storage.read_bytes(storage.join(run, PROGRESS)))
        except (GeoSANEError, OSError, ValueError):  # not written yet
            progress = None
        if progress and progress != shown:
            shown = progress
            bar.total, bar.n = progress["total"], progress["step"]
            bar.set_postfix_str(progress["line"].split("  ", 1)[-1])
        if stopping:
            break
    bar.close()


def geosane_cause(error: BaseException) -> GeoSANEError | None:
    """The GeoSANEError inside Ray's wrappers (worker failures, task errors, chained causes), if any."""
    pending: list[Any] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, GeoSANEError):
            return current
        pending += [
            getattr(current, "cause", None),
            current.__cause__,
            current.__context__,
            *getattr(current, "worker_failures", {}).values(),
        ]
    return None
