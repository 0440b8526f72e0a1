"""What every Ray Train worker runs: DeepSpeed steps over Ray Data windows, validation on whole held-out models,
checkpoints of the ZeRO shards, and at the end the consolidated fp32 autoencoder.

:func:`train_loop` is the worker function; :class:`WorkerLoop` holds its state and reads in the order a run goes:
start (engine, held-out models, resume), the steps (each one timed, logged, checkpointed when due), the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geosane import storage
from geosane.autoencoder import AutoencoderConfig, checkpoints
from geosane.train.config import TrainConfig, nvme_folder, resume_key
from geosane.train.engine import Horizon, build_engine, fit_horizon

__all__ = ["PROGRESS", "StepMeter", "WorkerLoop", "progress_line", "remove_offload_files", "train_loop"]

log = logging.getLogger(__name__)
PREFETCH_BATCHES = 4  # batches Ray Data prepares ahead of the step that needs them


CALIBRATION_STEPS = 20  # with a wall-clock budget, the steps timed before the schedule's length is first fitted


SHUFFLE_BATCHES = 8  # each worker shuffles its windows in a buffer of this many batches (blocks are one model each)
PROGRESS = "progress.json"  # in the run: the last progress line, which the driver shows as a progress bar


class StepMeter:
    """Wall time, data wait and tokens of each step. Throughput counts from the end of the first step, so the
    start-up (the data pipeline's first batch, allocation) is reported apart from the steady state."""

    def __init__(self) -> None:
        self.began = self.step_began = self.waiting_since = time.perf_counter()
        self.tokens, self.wait = 0, 0.0  # this step's
        self.startup: float | None = None
        self.steady_began, self.steady_tokens, self.steady_wait = 0.0, 0, 0.0

    def fetching(self) -> None:
        """The worker starts waiting for a batch."""
        self.waiting_since = time.perf_counter()

    def next_step(self) -> None:
        """After evaluation, logging and checkpoints: the next step's clock starts now."""
        self.step_began = self.waiting_since = time.perf_counter()

    def fetched(self) -> None:
        """The batch came: its wait counts."""
        self.wait += time.perf_counter() - self.waiting_since

    def step_done(self) -> dict[str, float]:
        """The step's time and data wait, the start-up and the steady pace so far."""
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
    """Runs on every Ray Train worker: start (or resume), train to the schedule's end, save the final model.

    Args:
        loop_config: the run's settings, the autoencoder's, the run folder, the held-out model ids and the
            collection version (``geosane.train.run.run_training`` builds it).
    """
    worker = WorkerLoop(loop_config)
    metrics = worker.train()
    worker.finish(metrics)


class WorkerLoop:
    """One worker's run. Every rank validates every held-out model (under ZeRO-3 each forward pass is a
    collective), so all ranks take the same steps in the same order."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train
        import torch
        from torch.utils.tensorboard import SummaryWriter

        from geosane.autoencoder.losses import LossConfig
        from geosane.collection import Collection

        self.config = config = TrainConfig(**loop_config["train"])
        self.model_config = AutoencoderConfig(**loop_config["model"])
        self.run, self.collection_version = loop_config["run"], loop_config["collection_version"]
        torch.set_num_threads(1)  # one core per worker; more only oversubscribes the machine
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.engine, self.schedule = build_engine(config, self.model_config)
        self.loss_config = LossConfig(config.gamma, config.temperature)
        collection = Collection(config.collection, self.collection_version)
        self.val_models = [collection.tokens(model_id) for model_id in loop_config["val"]]
        # models of what the run's holdout rules keep out (whole families...): reported apart at each evaluation
        self.unseen_models = [collection.tokens(model_id) for model_id in loop_config.get("held_out", [])]
        self.step, self.val_start = self.resume()
        self.tensorboard = Path(tempfile.mkdtemp(prefix="geosane-tensorboard-"))
        self.writer = SummaryWriter(str(self.tensorboard)) if self.rank == 0 else None
        self.validation_seconds: list[float] = []

    def resume(self) -> tuple[int, float | None]:
        """The step and starting validation error of the checkpoint Ray Train hands back, or a fresh start."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return 0, None
        with checkpoint.as_directory() as folder:
            saved = checkpoints.verify(Path(folder), self.world, resume_key(self.config))
            self.engine.load_checkpoint(folder, tag=checkpoints.TAG)
        if self.rank == 0:
            log.info("resumed from step %d", saved["step"])
        return saved["step"], saved["val_reconstruction_start"]

    def validate(self, models: list | None = None) -> float:
        """Held-out models' mean reconstruction error (the validation lineages unless ``models`` are given), each
        encoded and decoded whole as a user would."""
        began = time.perf_counter()
        self.engine.eval()
        models = self.val_models if models is None else models
        errors = [self.engine.module.reconstruction_error(tokens, network=self.engine) for tokens in models]
        self.engine.train()
        self.validation_seconds.append(time.perf_counter() - began)
        return sum(errors) / len(errors)

    def batches(self) -> Any:
        """One pass over this worker's shard of the training windows, shuffled locally, on the engine's device."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        for batch in shard.iter_torch_batches(
            batch_size=self.config.batch_size,
            drop_last=True,
            prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=SHUFFLE_BATCHES * self.config.batch_size,
            local_shuffle_seed=self.config.seed + self.rank,
        ):
            yield {k: v.to(self.engine.device) for k, v in batch.items()}

    def train(self) -> dict[str, Any]:
        """Steps until the schedule's end (passes over the data restart as needed); returns the last metrics."""
        from geosane.autoencoder.losses import training_losses

        self.loop_began = time.perf_counter()
        if self.val_start is None:
            self.val_start = self.validate()  # the held-out models before any training: the yardstick for progress
        metrics: dict[str, Any] = {"step": self.step, "val_reconstruction_start": self.val_start}
        self.meter, self.horizon, self.first_step = StepMeter(), self.schedule.lr_lambdas[0], self.step
        horizon: Horizon = self.horizon
        while self.step < horizon.total:
            self.meter.fetching()
            for batch in self.batches():
                self.meter.fetched()
                losses = training_losses(self.engine, batch, self.loss_config, self.config.bf16)
                self.engine.backward(losses["loss"])
                self.engine.step()
                self.meter.tokens += int(batch["valid"].gt(0).sum()) * self.world
                if not self.engine.is_gradient_accumulation_boundary() and self.config.grad_accum > 1:
                    self.meter.fetching()
                    continue
                metrics = self.after_step(losses)
                if self.step >= horizon.total:
                    break
                self.meter.next_step()
        if metrics.keys() == {"step", "val_reconstruction_start"}:  # resumed a finished run: report where it stands
            import ray.train

            ray.train.report({**metrics, "val_reconstruction": self.validate()})
        return metrics

    def after_step(self, losses: dict[str, Any]) -> dict[str, Any]:
        """A step is done: its metrics, validation when due, the budget fitted, a progress line, a report."""
        import ray.train

        self.step += 1
        step, config = self.step, self.config
        if step == self.first_step + 1:  # budget timing starts after the first step (Ray Data's start-up)
            self.timing_began, self.validated_before = time.perf_counter(), sum(self.validation_seconds)
        metrics = {
            "step": step,
            "loss": float(losses["loss"]),
            "reconstruction": float(losses["reconstruction"]),
            "contrastive": float(losses["contrastive"]),
            "lr": self.schedule.get_last_lr()[0],
            "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            **self.meter.step_done(),
            "val_reconstruction_start": self.val_start,
        }
        evaluate = step % config.eval_every == 0 or step == self.horizon.total
        if evaluate:
            metrics["val_reconstruction"] = self.validate()
            if self.unseen_models:
                metrics["held_out_reconstruction"] = self.validate(self.unseen_models)
        self.fit_budget(evaluate)
        if self.rank == 0 and (step % config.log_every == 0 or evaluate):
            self.show_progress(metrics)
        if self.writer:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(key, value, step)
        # Ray Train's report is a barrier that waits for the controller's poll (every 2 s): report only when
        # evaluating or checkpointing, while TensorBoard gets every step
        if step % config.checkpoint_every == 0 or step == self.horizon.total:
            if self.writer:
                self.writer.flush()
                storage.upload(self.tensorboard, storage.join(self.run, "tensorboard"))
            save_and_report(self.engine, config, self.model_config, metrics, self.rank)
        elif evaluate:
            ray.train.report(metrics)
        return metrics

    def fit_budget(self, evaluated: bool) -> None:
        """With a budget: fit the schedule once the first steps are timed, and again at every validation (the steady
        pace is only known once Ray Data's pipeline is full)."""
        step, horizon = self.step, self.horizon
        calibrated = step == self.first_step + 1 + CALIBRATION_STEPS and not horizon.fitted
        refit = evaluated and horizon.fitted and self.first_step + 1 < step < horizon.total
        if self.config.budget_minutes and (calibrated or refit):
            fit_horizon(
                horizon,
                self.config,
                step,
                step - self.first_step - 1,
                time.perf_counter() - self.timing_began - (sum(self.validation_seconds) - self.validated_before),
                max(self.validation_seconds),
                time.perf_counter() - self.loop_began,
                self.engine.device,
            )

    def show_progress(self, metrics: dict[str, Any]) -> None:
        """A progress line on stdout and in ``run/progress.json``, which the driver's progress bar follows."""
        elapsed = time.perf_counter() - self.loop_began
        per_step = (elapsed - sum(self.validation_seconds)) / (self.step - self.first_step)  # validations are rare
        line = progress_line(metrics, self.horizon.total, elapsed, per_step)
        print(line, flush=True)
        progress = {"step": self.step, "total": self.horizon.total, "line": line}
        storage.write_bytes(storage.join(self.run, PROGRESS), json.dumps(progress).encode())

    def finish(self, metrics: dict[str, Any]) -> None:
        """The consolidated fp32 model for generation: each full parameter is gathered by all ranks (a collective
        under ZeRO) one at a time, and only rank 0 keeps them and saves ``run/final``."""
        import torch
        from deepspeed.utils import safe_get_full_fp32_param

        from geosane.autoencoder import Autoencoder

        state = {}
        for name, parameter in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(parameter)
            if self.rank == 0:
                state[name] = (full if full is not None else parameter).detach().float().cpu().contiguous()
        if self.rank == 0:
            info = {
                "train": asdict(self.config),
                "collection": self.config.collection,
                "collection_version": self.collection_version,
                "step": self.step,
                "metrics": metrics,
            }
            with torch.device("meta"):
                final = Autoencoder(self.model_config, info)
            final.load_state_dict(state, assign=True)
            final.save(storage.join(self.run, "final"))
        if self.writer:
            self.writer.close()
            storage.upload(self.tensorboard, storage.join(self.run, "tensorboard"))
        shutil.rmtree(self.tensorboard, ignore_errors=True)  # uploaded: the local copy was only a staging folder
        remove_offload_files(self.config)


def progress_line(metrics: dict[str, Any], total: int, elapsed: float, seconds_per_step: float) -> str:
    """``step 120/1450  loss 0.1234  reconstruction 0.1200  val 0.3400  2,345 tokens/s  4.1 min, 12.3 left``.

    Args:
        metrics: the step's metrics.
        total: the run's steps.
        elapsed: seconds since the loop began.
        seconds_per_step: the pace, validations left out.

    Returns:
        The line.
    """
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
