"""Train the weight autoencoder with Ray Train and DeepSpeed ZeRO, fed by Ray Data from a collection.

Every worker runs a DeepSpeed engine (ZeRO stage 0-3, bf16 optional, optimizer offload optional, gradient
accumulation, AdamW with weight decay on >= 2-D tensors only, OneCycle). Every ``checkpoint_every`` steps all
ranks save their ZeRO shards and report them as one Ray Train checkpoint in the run's storage; a restarted
worker group (``FailureConfig``) and a re-run with the same ``--name`` resume from the latest one. Each rank
also records the SHA-256 of the files it saved, so a corrupt or mismatched checkpoint is refused with a clear
message before DeepSpeed reads it. At the end a consolidated fp32 checkpoint (safetensors + config) is written
to ``<storage>/<name>/final`` for generation. TensorBoard logs go to ``<storage>/<name>/tensorboard``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from geosane import storage
from geosane.errors import GeoSANEError

log = logging.getLogger(__name__)
TAG = "state"  # DeepSpeed's checkpoint tag inside every reported checkpoint
PREFETCH_BATCHES = 4  # batches Ray Data prepares ahead of the step that needs them
STEPS_PER_PASS = 200  # a pass over the training models holds at least this many steps (each pass restarts Ray Data)
SHUFFLE_BATCHES = 8  # each worker shuffles its windows in a buffer of this many batches (blocks are one model each)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# with offload "nvme", ZeRO-3 brings the optimizer states into memory one sub-group of parameters at a time. DeepSpeed's
# default (1e9) makes one group of a whole 0.9B model, so at start-up every state sat in memory at once.
NVME_SUB_GROUP = 50_000_000


@dataclass
class TrainConfig:
    """Everything a training run depends on; recorded with every checkpoint and the final model."""

    collection: str = ""
    storage: str = "runs"
    name: str = "autoencoder"
    model: str = "tiny"
    window: int | None = None  # overrides the model size's window
    workers: int = 2
    use_gpu: bool = False
    zero_stage: int = 2
    bf16: bool = False
    offload: str = "none"  # optimizer states: "none", "cpu", or "nvme" (files under nvme_path; ZeRO-3 only)
    nvme_path: str = ""  # a fast local disk for offload "nvme" (default: <temp>/geosane-nvme); each run its own folder
    steps: int = 200
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
    gamma: float = 0.05
    temperature: float = 0.1
    max_failures: int = 1
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise GeoSANEError(f"train config {path} not found") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GeoSANEError(f"{path}: unknown setting(s) {unknown}")
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise GeoSANEError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not self.collection:
            raise GeoSANEError("no collection given (--collection URL)")
        if self.offload not in OFFLOAD_DEVICES:
            raise GeoSANEError(f"offload must be one of {OFFLOAD_DEVICES}, got {self.offload!r}")
        if self.offload == "nvme" and self.zero_stage != 3:
            raise GeoSANEError(f"offload 'nvme' needs zero_stage 3, got {self.zero_stage}")
        if self.steps < 1 or self.checkpoint_every < 1:
            raise GeoSANEError("steps and checkpoint_every must be >= 1")


def autoencoder_config(config: TrainConfig, token_size: int):
    from geosane.model import config_named

    overrides: dict[str, Any] = {"token_size": token_size}
    if config.window:
        overrides["window"] = config.window
    return config_named(config.model, **overrides)


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


def parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW decays matrices (>= 2-D) only: never biases, norms or embeddings of one dimension."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------ checkpoints on disk


def record_files(folder: Path, rank: int, config: TrainConfig, progress: dict[str, Any]) -> None:
    """Write ``rank<r>.json``: progress (step...), the settings that must match to resume, the files' sha256."""
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / f"rank{rank}.json").write_text(json.dumps({**progress, "resume_key": resume_key(config), "files": files}))


def verify_checkpoint(folder: Path, world_size: int, config: TrainConfig) -> dict[str, Any]:
    """Check every rank's record against the files and this run's settings; return rank 0's record."""
    steps = set()
    for rank in range(world_size):
        record_file = folder / f"rank{rank}.json"
        if not record_file.exists():
            raise GeoSANEError(f"checkpoint {folder}: no record of rank {rank} (saved by another number of workers?)")
        record = json.loads(record_file.read_text())
        if record["resume_key"] != resume_key(config):
            raise GeoSANEError(
                f"checkpoint {folder} was saved with different settings {record['resume_key']}, "
                f"this run has {resume_key(config)}; use another --name to start afresh"
            )
        for name, digest in record["files"].items():
            path = folder / name
            if not path.exists():
                raise GeoSANEError(f"checkpoint {folder}: {name} is missing")
            if sha256_file(path) != digest:
                raise GeoSANEError(f"checkpoint {folder}: {name} is corrupt (sha256 differs from when it was saved)")
        steps.add(record["step"])
    if len(steps) != 1:
        raise GeoSANEError(f"checkpoint {folder}: ranks saved different steps {sorted(steps)}")
    return json.loads((folder / "rank0.json").read_text())


def resume_key(config: TrainConfig) -> dict[str, Any]:
    """Settings a checkpoint can only be resumed with unchanged (shapes and sharding of the saved state)."""
    return {"model": config.model, "window": config.window, "workers": config.workers, "zero_stage": config.zero_stage,
            "bf16": config.bf16, "offload": config.offload}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ the worker loop


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
        raise GeoSANEError("offload 'nvme' needs libaio for DeepSpeed's async_io op, and it is not on this machine: "
                           "install it (Debian/Ubuntu: apt-get install libaio-dev) or use --offload cpu")


def build_engine(config: TrainConfig, model_config):
    """The autoencoder inside a DeepSpeed engine with AdamW and OneCycle; call on every rank."""
    import deepspeed
    import torch

    from geosane.model import WeightAutoencoder

    return_large_blocks_to_the_os()
    if config.offload == "nvme":
        require_async_io()
    torch.manual_seed(config.seed)
    # under ZeRO-3 each rank builds only its partition of the parameters: the full model never sits in one process
    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(config), enabled=config.zero_stage == 3):
        model = WeightAutoencoder(model_config)
    fused = config.use_gpu and config.offload == "none"  # one CUDA kernel for the whole update
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, fused=fused)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(config)
    )
    return engine, schedule


def autoencoder_losses(engine, batch: dict, loss_config, bf16: bool) -> dict:
    """Both views through the autoencoder in the batch's standardized units (the units of the loss)."""
    import torch

    from geosane.losses import batch_statistics, geosane_loss
    from geosane.tokenize import prefix_mask

    dtype = torch.bfloat16 if bf16 else torch.float32
    mask = prefix_mask(batch["valid"], batch["tokens"].shape[-1])
    mean, std = batch_statistics(batch["tokens"], mask)
    outputs = [engine(((batch[v] - mean) / std * mask).to(dtype), batch["positions"]) for v in ("view1", "view2")]
    reconstructions = tuple(o[1].float() * std + mean for o in outputs)
    projections = tuple(o[2] for o in outputs)
    return geosane_loss(reconstructions, projections, batch["tokens"], mask, loss_config)


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
        return {**step, "startup_seconds": self.startup, "tokens_per_s": self.steady_tokens / steady if steady else 0.0,
                "data_wait_fraction": self.steady_wait / steady if steady else 0.0}


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from deepspeed.utils import safe_get_full_fp32_param
    from torch.utils.tensorboard import SummaryWriter

    from geosane.losses import LossConfig
    from geosane.model import AutoencoderConfig

    config = TrainConfig(**loop_config["train"])
    model_config = loop_config["model"]
    torch.set_num_threads(1)  # one core per worker; more only oversubscribes the machine
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    engine, schedule = build_engine(config, AutoencoderConfig(**model_config))
    device = engine.device
    loss_config = LossConfig(config.gamma, config.temperature)

    step, val_start = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = verify_checkpoint(Path(folder), world, config)
            engine.load_checkpoint(folder, tag=TAG)
        step, val_start = saved["step"], saved["val_reconstruction_start"]
        if rank == 0:
            log.info("resumed from step %d", step)

    tensorboard = Path(tempfile.mkdtemp(prefix="geosane-tensorboard-"))
    writer = SummaryWriter(str(tensorboard)) if rank == 0 else None
    run = loop_config["run"]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in batch.items()}

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return autoencoder_losses(engine, batch, loss_config, config.bf16)

    @torch.no_grad()
    def validate() -> float:
        engine.eval()
        total, count = 0.0, 0
        for batch in val_shard.iter_torch_batches(batch_size=config.batch_size, drop_last=False):
            losses = forward(to_device(batch))
            total += float(losses["reconstruction"]) * len(batch["tokens"])
            count += len(batch["tokens"])
        engine.train()
        return total / max(count, 1)

    if val_start is None:
        val_start = validate()  # the held-out models before any training: the yardstick for progress
    metrics: dict[str, Any] = {"step": step, "val_reconstruction_start": val_start}
    meter = StepMeter()
    while step < config.steps:
        meter.fetching()
        for batch in train_shard.iter_torch_batches(
            batch_size=config.batch_size, drop_last=True, prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=SHUFFLE_BATCHES * config.batch_size, local_shuffle_seed=config.seed + rank,
        ):
            meter.fetched()
            batch = to_device(batch)
            losses = forward(batch)
            engine.backward(losses["loss"])
            engine.step()
            meter.tokens += int(batch["valid"].gt(0).sum()) * world
            if not engine.is_gradient_accumulation_boundary() and config.grad_accum > 1:
                meter.fetching()
                continue
            step += 1
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
            evaluate = step % config.eval_every == 0 or step == config.steps
            if evaluate:
                metrics["val_reconstruction"] = validate()
            if writer:
                for key, value in metrics.items():
                    if key != "step":
                        writer.add_scalar(key, value, step)
            # Ray Train's report is a barrier that waits for the controller's poll (every 2 s): report only when
            # evaluating or checkpointing, while TensorBoard gets every step
            if step % config.checkpoint_every == 0 or step == config.steps:
                if writer:
                    writer.flush()
                    upload(tensorboard, storage.join(run, "tensorboard"))
                save_and_report(engine, config, metrics, rank)
            elif evaluate:
                ray.train.report(metrics)
            if step >= config.steps:
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
        from safetensors.torch import save

        storage.write_bytes(storage.join(run, "final", "model.safetensors"), save(state))
        storage.write_bytes(storage.join(run, "final", "config.json"), json.dumps(
            {"autoencoder": model_config, "train": asdict(config), "step": step, "metrics": metrics}, indent=1).encode())
        writer.close()
        upload(tensorboard, storage.join(run, "tensorboard"))
    remove_offload_files(config)


def remove_offload_files(config: TrainConfig) -> None:
    """Offload "nvme" leaves the optimizer's swap files behind; a finished run has no more use for them."""
    if config.offload == "nvme":
        shutil.rmtree(nvme_folder(config), ignore_errors=True)


def upload(folder: Path, url: str) -> None:
    fs, path = storage.filesystem(url)
    fs.put(str(folder) + "/", path.rstrip("/") + "/", recursive=True)


def save_and_report(engine, config: TrainConfig, metrics: dict[str, Any], rank: int) -> None:
    """All ranks save their DeepSpeed shards and report them; Ray Train merges them into one checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=TAG)
        record_files(Path(folder), rank, config, {k: metrics[k] for k in ("step", "val_reconstruction_start")})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


# ------------------------------------------------------------------------------ the driver


def run_training(config: TrainConfig, progress: bool = True):
    """Build the data and the trainer, fit (resuming if this run name has checkpoints), copy TensorBoard logs."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from geosane.collection import Collection
    from geosane.data import split_models, window_dataset, windows_per_model_for
    from geosane.views import ViewConfig

    config.validate()
    collection = Collection(config.collection)
    records = collection.records()
    token_size = records[0].token_size
    model_config = autoencoder_config(config, token_size)
    split = split_models([r.id for r in records], config.val_fraction, config.seed)
    views = ViewConfig(window=model_config.window, noise=config.noise, erase_probability=config.erase_probability,
                       permute_hidden_units=config.permute_hidden_units)
    global_batch = config.batch_size * config.workers * config.grad_accum
    views = replace(views, windows_per_model=windows_per_model_for(
        config.collection, split.train, views, min(config.steps, STEPS_PER_PASS) * global_batch))
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # a cluster (ray job submit): use what it has
            ray.init(include_dashboard=False)
        else:  # one machine: the workers take a CPU each and Ray Data needs CPUs beside them to feed them
            ray.init(num_cpus=max(os.cpu_count() or 1, config.workers + 2), include_dashboard=False,
                     log_to_driver=progress)
    storage_root = str(Path(config.storage).resolve()) if "://" not in config.storage else config.storage
    run = storage.join(storage_root, config.name)
    storage.write_bytes(storage.join(run, "split.json"), json.dumps(
        {"collection": config.collection, "train": split.train, "val": split.val}, indent=1).encode())
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": asdict(config), "model": model_config.to_dict(), "run": run},
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=storage_root,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={
            "train": window_dataset(config.collection, split.train, views, train=True, seed=config.seed),
            # fixed windows without augmentation: computed once, reused at every evaluation
            "val": window_dataset(config.collection, split.val, views, train=False, seed=config.seed).materialize(),
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours with its own message
        cause = geosane_cause(exc)
        if cause is None:
            raise
        raise GeoSANEError(cause.args[0] if cause.args else str(cause)) from exc


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
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__,
                    *getattr(current, "worker_failures", {}).values()]
    return None
