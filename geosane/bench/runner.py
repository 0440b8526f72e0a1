"""Running a sweep: one Ray Tune experiment whose trials build their model, score it before any fine-tuning (epoch
0), fine-tune it with the task's budget and report after every epoch; resumable from Tune's checkpoints."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from geosane.autoencoder import Autoencoder
from geosane.bench.choices import chosen_rates, edge_steps, results_frame
from geosane.bench.config import BenchConfig
from geosane.bench.context import TrialContext
from geosane.bench.held_out import check_held_out
from geosane.bench.initializations import build_initial_model
from geosane.errors import GeoSANEError
from geosane.tasks import FineTuning, Recipe, TaskData, load_task, metric_name, score
from geosane.tasks.probes import probe_scores

__all__ = ["TABLE_EPOCHS", "BenchRun", "asha", "collection_of", "fine_tune", "run_bench", "run_phases", "run_trial"]

log = logging.getLogger(__name__)

#: The epochs at which a trial scores the test split besides its last one (the results tables' columns).
TABLE_EPOCHS = (0, 1, 5)


def fine_tune(
    model: nn.Module,
    context: TrialContext,
    report: Callable[[dict[str, Any], dict[str, Any] | None], None],
    resume: dict[str, Any] | None = None,
) -> None:
    """Score at epoch 0, then fine-tune with the task's budget (the one recipe, :class:`geosane.tasks.FineTuning`),
    scoring on selection after every epoch (the curves) and on test only at the epochs the tables read
    (:data:`TABLE_EPOCHS` and the last: a whole test split is the trial's largest evaluation), reporting after every
    epoch.

    Args:
        model: the trial's model, as its initialization built it.
        context: the trial's task, data, seed and the sweep's settings.
        report: called after every epoch with the metrics and the state a restart needs.
        resume: that state, from the trial's last checkpoint.
    """
    task, data = context.task.budgeted(len(context.data.train[0])), context.data
    epochs = int(task.epochs or 0)  # budgeted: steps became whole epochs
    metric = metric_name(data.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU where the trial was given one
    model.to(device)
    if getattr(model, "teacher", None) is not None:
        model.teacher.to(device)
    recipe = Recipe(
        epochs,
        context.lr,
        task.batch_size,
        context.config.weight_decay,
        context.config.flips,
        context.config.distillation,
    )
    tuning = FineTuning(model, data.train, data.task, recipe, context.seed)
    start = 0
    if resume:
        model.load_state_dict(resume["model"])
        tuning.restore(resume)
        start = resume["epoch"] + 1
    tested = {*TABLE_EPOCHS, epochs}
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        loss = tuning.epoch() if epoch > 0 else float("nan")
        probes = {"linear_probe": math.nan, "few_shot_probe": math.nan}
        if epoch == 0 and data.task == "classification":  # its worth before any fine-tuning, frozen
            probes = probe_scores(model.cpu(), data, context.seed)
            model.to(device)
        metrics = {
            "epoch": epoch,
            "metric": metric,
            "test_score": score(model, data, "test") if epoch in tested else math.nan,
            "selection_score": score(model, data, "selection"),
            "train_loss": loss,
            **probes,
            "epoch_seconds": time.perf_counter() - began,
        }
        report(metrics, {"model": model.state_dict(), **tuning.state(), "epoch": epoch})


def run_trial(config: dict[str, Any], bench: BenchConfig, data: dict[int, TaskData], collection: dict) -> None:
    """One Tune trial: build the initialization's model, then fine-tune it; resumes from Tune's last checkpoint.

    Args:
        config: Tune's trial config (``{"trial": {task, init, seed, ...}}``).
        bench: the sweep.
        data: every task's data by index.
        collection: the collection URL and version.
    """
    from ray import tune

    trial = config["trial"]
    common = {"config": bench, "seed": trial["seed"], **collection}
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.set_flush_denormal(True)  # weights averaged or decoded can leave denormal values, many times slower on a CPU
    task = bench.tasks[trial["task"]]
    context = TrialContext(task=task, data=data[trial["task"]], lr=trial.get("lr", task.lrs[0]), **common)
    model, notes = build_initial_model(trial["init"], context)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=True)

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        extra = {
            "source": notes["source"],
            "parameters": notes["parameters"],
            "init_selection": float(notes.get("selection") or math.nan),  # its own ranking score, where it was chosen
            "distance": float(notes.get("distance", math.nan)),  # normalized distance to its anchor (weight space)
            "chosen_from": int(notes.get("chosen_from", 1)),  # N of its best-of-N choice on the selection split
        }
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder))

    fine_tune(model, context, report, resume)


def collection_of(config: BenchConfig, autoencoder: Autoencoder | None = None) -> dict[str, Any]:
    """The collection the sweep reads, pinned at its current version (every trial sees the same models).

    Args:
        config: the sweep.
        autoencoder: the sweep's autoencoder, where it is loaded already.

    Returns:
        The collection's URL and version (both None where there is none).
    """
    from geosane.collection import Collection

    url = config.collection
    if not url:
        url = (autoencoder or Autoencoder.load(config.autoencoder)).anchors
    if not url:
        return {"collection": None, "version": None}
    if not Collection(url).exists():
        raise GeoSANEError(f"no collection at {url}")
    return {"collection": url, "version": Collection(url).version}


@dataclass
class BenchRun:
    """A finished sweep: Tune's results of each phase, the collection (URL, version) it read, the held-out checks'
    findings, and the sweep as it ran (budgets in epochs)."""

    results: list[Any]  # ray.tune.ResultGrid per phase: the grid, its edge extensions, the other seeds
    collection: dict[str, Any]
    held_out: dict[str, Any]
    experiment: str
    config: BenchConfig | None = None


def run_bench(
    config: BenchConfig, storage: str, name: str | None = None, resume: bool = False, progress: bool = True
) -> BenchRun:
    """Run (or, with ``resume``, continue) the sweep's Tune experiments, in up to three phases: the learning-rate
    grid on the tuning seeds; for each initialization whose chosen rate (best on the selection split) is at an edge
    of the grid, one step past that edge on the same seeds; and the other seeds at each initialization's chosen rate.
    Each phase is an experiment of its own (``NAME``, ``NAME-edges``, ``NAME-rest``), resumed where it stopped.

    Args:
        config: the sweep.
        storage: Tune's experiment storage.
        name: the experiment (default: the sweep's name).
        resume: continue an existing experiment.
        progress: show a progress bar over the trials.

    Returns:
        Tune's results with the collection and held-out checks.

    Raises:
        GeoSANEError: an existing experiment without ``resume``, or a task that is not held out.
    """
    import ray
    from ray import tune

    from geosane.storage import absolute
    from geosane.tuning import run_experiment, trial_name

    storage = absolute(storage)
    config = config.resolved()
    name = name or config.name
    experiment = f"{storage.rstrip('/')}/{name}"
    exists = tune.Tuner.can_restore(experiment)
    if exists and not resume:
        raise GeoSANEError(f"a sweep named {name} exists in {storage}: pass --resume to continue it, or another --name")
    if resume and not exists:
        log.info("nothing to resume at %s: starting the sweep %s afresh", experiment, name)
    autoencoder = Autoencoder.load(config.autoencoder)  # a missing or damaged one fails here, before Ray starts
    collection = collection_of(config, autoencoder)
    held_out = check_held_out(config, collection)
    data = {
        index: load_task(task.data, config.data_root, task.train_limit, task.selection_limit, task.test_limit)
        for index, task in enumerate(config.tasks)
    }
    config = replace(config, tasks=[t.budgeted(len(data[i].train[0])) for i, t in enumerate(config.tasks)])
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, bench=config, data=data, collection=collection),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    scheduler = asha(config)

    def phase(suffix: str, trials: list[dict[str, Any]]) -> Any:
        return run_experiment(
            trainable,
            storage,
            name + suffix,
            {"trial": tune.grid_search(trials)},
            f"bench {name}{suffix}",
            progress,
            keep_checkpoints=1,
            reuse_actors=True,  # what a trial's initialization remembers (the best anchor) serves the next one
            scheduler=scheduler,
            metric="selection_score" if scheduler else None,
            mode="max" if scheduler else None,
            max_concurrent_trials=config.max_concurrent or None,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        )

    return BenchRun(run_phases(config, phase), collection, held_out, experiment, config)


def asha(config: BenchConfig) -> Any:
    """Tune's ASHA scheduler on the selection score, where the sweep asks for it (else None)."""
    if not config.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        max_t=max(t.epochs or 1 for t in config.tasks),
        grace_period=config.scheduler.grace_period,
        reduction_factor=config.scheduler.reduction_factor,
    )


def run_phases(config: BenchConfig, phase: Callable[[str, list[dict[str, Any]]], Any]) -> list[Any]:
    """The protocol's phases, each run by ``phase(suffix, trials)`` as a Tune experiment of its own: the grid on the
    tuning seeds; one step past a grid's edge where a choice sits on it; the other seeds at the chosen rates.

    Args:
        config: the sweep (budgets in epochs).
        phase: runs one phase's trials and returns Tune's results.

    Returns:
        Each phase's results, in order.
    """
    results = [phase("", config.trials())]
    edges = edge_steps(results_frame(results, config), config)
    if edges:
        log.info("learning rates chosen at a grid's edge: one step past it for %s", edges)
        results.append(phase("-edges", config.trials(edges, "edge")))
    if config.tuning_seeds is not None:
        chosen = chosen_rates(results_frame(results, config), config)
        rest = config.trials({key: [lr] for key, lr in chosen.items()}, "rest")
        if rest:
            results.append(phase("-rest", rest))
    return results
