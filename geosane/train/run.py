"""Train the weight autoencoder with Ray Train and DeepSpeed ZeRO, fed by Ray Data from a collection.

Every worker runs a DeepSpeed engine (ZeRO stage 0-3, bf16 optional, optimizer offload optional, gradient
accumulation, AdamW with weight decay on >= 2-D tensors only, OneCycle) around a :class:`geosane.Autoencoder`.
Every ``checkpoint_every`` steps all ranks save their ZeRO shards and report them as one Ray Train checkpoint in
the run's storage (``geosane.autoencoder.checkpoints``); a restarted worker group (``FailureConfig``) and a
re-run with the same ``--name`` resume from the latest one. Validation encodes and decodes the held-out models
whole, exactly as ``Autoencoder.encode`` / ``decode`` do for a user. At the end the consolidated fp32 autoencoder
is saved to ``<storage>/<name>/final`` (``Autoencoder.load`` reads it). TensorBoard logs go to
``<storage>/<name>/tensorboard``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

from geosane import storage
from geosane.autoencoder import AutoencoderConfig
from geosane.errors import GeoSANEError
from geosane.train.config import TrainConfig, resume_key
from geosane.train.loop import PROGRESS, train_loop
from geosane.views import ViewConfig

__all__ = ["SPLIT", "STEPS_PER_PASS", "run_training", "training_plan", "training_views"]

log = logging.getLogger(__name__)

STEPS_PER_PASS = 200  # a pass over the training models holds at least this many steps (each pass restarts Ray Data)


def training_views(config: TrainConfig, model_config: AutoencoderConfig, train_ids: list[str]) -> ViewConfig:
    """The windows and views a run trains on: the model's window, the run's augmentation, and enough windows per
    model that one pass over small collections lasts ``STEPS_PER_PASS`` steps (each pass restarts Ray Data).

    Args:
        config: the run's settings.
        model_config: the autoencoder's settings.
        train_ids: the training models.

    Returns:
        The view settings.
    """
    from geosane.train.token_stream import windows_per_model_for

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


def training_plan(config: TrainConfig, run: str) -> dict[str, Any]:
    """What the run ``run`` trains on: the collection at one version, the lineage split, and the settings a
    resume must share. A new run plans them now; a resumed run reads its own plan back, and a resume that asks for
    another collection or other settings is refused here, before Ray starts and without changing the run.

    Args:
        config: the run's settings.
        run: the run's URL.

    Returns:
        The plan: collection, version, train/validation split, resume key.

    Raises:
        GeoSANEError: a resume with another collection or settings, or no table-format collection.
    """
    from geosane.collection import Collection
    from geosane.train.token_stream import split_models

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
    scales = [(r.name, (r.token_mean, r.token_std)) for r in records]  # names repeat: every record is checked
    broken = [name for name, scale in scales if not all(math.isfinite(v) for v in scale if v is not None)]
    if broken:
        raise GeoSANEError(
            f"{collection.url}: {len(broken)} model(s) have non-finite weights (their scale is NaN or infinite), "
            f"e.g. {', '.join(broken[:3])}; training on them gives NaN: collect without them"
        )
    split = split_models(records, config.val_fraction, config.seed, config.holdout)
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


def build_trainer(config: TrainConfig, plan: dict[str, Any], run: str) -> Any:
    """Ray Train's trainer for a planned run: the autoencoder for the collection's tokens, the Ray Data windows of
    the training models, and local Ray started where no cluster is (a worker a CPU, and CPUs for Ray Data beside).

    Args:
        config: the run's settings.
        plan: :func:`training_plan`, written to the run when it is new.
        run: the run's URL.

    Returns:
        A ``TorchTrainer`` ready to fit.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from geosane.collection import Collection
    from geosane.train.token_stream import ModelSplit, window_dataset

    collection = Collection(config.collection, plan["collection_version"])
    records = collection.records()
    model_config = config.autoencoder_config(records[0].token_size, records[0].mode)
    split = ModelSplit(plan["train"], plan["val"], plan["val_lineages"], plan.get("held_out", []))
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
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "train": asdict(config),
            "model": asdict(model_config),
            "run": run,
            "val": split.val,
            "held_out": split.held_out,
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


def run_training(config: TrainConfig, progress: bool = True) -> Any:
    """Train (or resume) the run ``config.name``: Ray Data windows of the collection's training models feed a Ray
    Train worker group of DeepSpeed engines; returns Ray Train's result (``.metrics`` holds the last report).

    Args:
        config: the run's settings.
        progress: a progress bar in the driver.

    Returns:
        Ray Train's result, or the finished run's metrics when it had finished as asked.

    Raises:
        GeoSANEError: bad settings, another collection or settings than the run was started with, a worker's own
            error.
    """
    config.validate()
    config = replace(config, collection=storage.absolute(config.collection))  # the workers read it too
    run = storage.join(storage.absolute(config.storage), config.name)
    if storage.within(run, config.collection):
        raise GeoSANEError(f"--storage {config.storage} puts the run inside the collection {config.collection}")
    plan = training_plan(config, run)  # every refusal comes here, before Ray starts and before anything is written
    final = storage.join(run, "final", "config.json")
    if storage.exists(storage.join(run, SPLIT)) and storage.exists(final):
        info = json.loads(storage.read_bytes(final)).get("info", {})
        asked = {k: getattr(config, k) for k in ("steps", "budget_minutes")}
        if {k: info.get("train", {}).get(k) for k in asked} == asked:  # finished as asked: nothing to resume
            log.info("run %s finished at step %s; its final model is in %s/final", config.name, info.get("step"), run)
            return FinishedRun({"step": info.get("step"), **info.get("metrics", {})})
    trainer = build_trainer(config, plan, run)
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
