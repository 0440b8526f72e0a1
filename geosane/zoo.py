"""A model zoo trained by Ray Tune: every trial trains one model on real data and checkpoints it often.

SANE and GeoSANE learn from populations of models. ``geosane zoo --config sweeps/zoo-small.yaml --out URL``
expands the config's groups (dataset x architectures x trials) into trials, lets Tune sample learning rate
and weight decay, runs the trials in parallel on the cluster's CPUs/GPUs, saves a checkpoint at each listed
epoch with its test metric, and finally adds every checkpoint to the collection with its metadata.

Interrupted zoos resume: re-running the same config finds Tune's experiment in ``--storage`` and restores it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Callable

import torch

from geosane.config import Seed, load_config, settings
from geosane.errors import GeoSANEError
from geosane.storage import absolute

__all__ = ["ZooConfig", "ZooGroup", "fit_member", "load_data", "member_epochs", "run_zoo", "start_weights"]

log = logging.getLogger(__name__)

#: Search-space primitives a config may use: data, never code.
SPACES = ("choice", "loguniform", "uniform", "randint")


@settings
class ZooGroup:
    """Trials of one dataset: architectures are used round-robin, trial k gets seed k."""

    dataset: str  # a registered dataset with options: eurosat_rgb, cloudmask?holdout=landsat5
    architectures: list[str]
    trials: int
    epochs: int
    checkpoint_epochs: list[int] | None = None  # default: every epoch
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 64
    search: dict[str, Any] = field(default_factory=dict)  # overrides the zoo's search space for this group
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm arguments, e.g. {patch_size: 8}
    exclude: list[str] = field(default_factory=list)  # datasets whose images this group never trains on (held out)
    # pretrained weights every lineage starts from (``pretrained:efficientnet_lite0``, a file): models fine-tuned from
    # one checkpoint share its units; the stem goes to the data's bands by name (geosane.tasks.start_from)
    start_from: str | None = None


@settings
class ZooConfig:
    """A zoo: groups of trials, the search space they share, and the resources of each trial."""

    name: str
    groups: list[ZooGroup]
    search: dict[str, Any] = field(default_factory=dict)
    seed: Seed = 0
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0  # 0: as many as resources allow
    licence: str = "MIT"
    token_size: int | None = None  # a new collection's token size (default 230); an existing one keeps its own

    @classmethod
    def from_yaml(cls, path: str | Path) -> ZooConfig:
        """A zoo from a YAML file (``sweeps/zoo-*.yaml``)."""
        config = load_config(path, cls)
        for key, spec in [*config.search.items(), *(i for g in config.groups for i in g.search.items())]:
            if isinstance(spec, dict) and (len(spec) != 1 or next(iter(spec)) not in SPACES):
                raise GeoSANEError(f"{path}: search.{key} must be a value or one of {{{', '.join(SPACES)}: ...}}")
        return config

    def trials(self, group: ZooGroup) -> list[dict[str, Any]]:
        """The explicit trials of one group, which Tune grids over."""
        from geosane.tuning import slug

        checkpoints = group.checkpoint_epochs or list(range(1, group.epochs + 1))
        if max(checkpoints) > group.epochs:
            raise GeoSANEError(f"{group.dataset}: checkpoint epoch {max(checkpoints)} > epochs {group.epochs}")
        return [
            {
                **asdict(group),
                "arch": group.architectures[k % len(group.architectures)],
                "seed": self.seed + k,
                "checkpoint_epochs": checkpoints,
                "stem": f"{slug(group.dataset)}-{group.architectures[k % len(group.architectures)]}-s{self.seed + k}",
            }
            for k in range(group.trials)
        ]


def search_space(config: ZooConfig, group: ZooGroup) -> dict[str, Any]:
    """Tune's space for one group: a grid over its trials, with learning rate and weight decay drawn."""
    from ray import tune

    space: dict[str, Any] = {"member": tune.grid_search(config.trials(group))}
    for key, spec in {**config.search, **group.search}.items():
        if isinstance(spec, dict):
            kind, args = next(iter(spec.items()))
            space[key] = getattr(tune, kind)(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:
            space[key] = spec
    return space


# ------------------------------------------------------------------------------------------- data


def data_key(spec: str, exclude: list[str] | None) -> str:
    """What a group's data is: its dataset, less the datasets it excludes."""
    return spec + "".join(f" -{e}" for e in sorted(exclude or []))


def load_data(config: ZooConfig, data_root: str | None) -> dict[str, dict[str, Any]]:
    """Every dataset the zoo needs, in memory: train and test tensors plus what the manifest records.

    Args:
        config: the zoo.
        data_root: where the data lives.

    Returns:
        Per group data key: train and test tensors, task, modality, bands and classes.

    Raises:
        GeoSANEError: a dataset the zoo cannot train (detection).
    """
    from geosane import datasets

    data: dict[str, dict[str, Any]] = {}
    for group in config.groups:
        key = data_key(group.dataset, group.exclude)
        if key in data:
            continue
        dataset = datasets.get(group.dataset, data_root)
        if dataset.task not in ("classification", "segmentation"):
            raise GeoSANEError(f"zoo trains classification and segmentation; {group.dataset} is {dataset.task}")
        train = dataset.load("train", limit=group.train_limit)
        if group.exclude:
            keep = set(datasets.training_ids(group.dataset, group.exclude, data_root, group.train_limit))
            mask = torch.tensor([i in keep for i in train.ids])
            log.info(
                "%s: %d train samples share images with %s and are left out", key, int((~mask).sum()), group.exclude
            )
            train = type(train)(train.x[mask], train.y[mask], [i for i in train.ids if i in keep])
        test = dataset.load("test", limit=group.test_limit)
        log.info("%s: %d train, %d test samples", key, len(train), len(test))
        data[key] = {"train": (train.x, train.y), "test": (test.x, test.y), **dataset.describe()}
    return data


# ------------------------------------------------------------------------------------------- trial


def train_member(config: dict[str, Any], data: dict[str, dict[str, Any]]) -> None:
    """One Tune trial: train one model, checkpoint at the listed epochs; resumes from Tune's last checkpoint."""
    from ray import tune

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = read_checkpoint(folder)
    fit_member(config, data, report, resume)


def read_checkpoint(folder: str | Path) -> dict[str, Any]:
    """A zoo checkpoint: the model (safetensors), the training state and the member's record."""
    from safetensors.torch import load_file

    folder = Path(folder)
    return {
        "model": load_file(folder / "model.safetensors"),
        "state": torch.load(folder / "train_state.pt", weights_only=True),
        "member": json.loads((folder / "member.json").read_text()),
    }


def fit_member(
    config: dict[str, Any],
    data: dict[str, dict[str, Any]],
    report: Callable[[dict[str, Any], str | None], None],
    resume: dict[str, Any] | None = None,
) -> None:
    """Train one zoo member with the one fine-tuning recipe; at each checkpoint epoch score it on test and
    ``report`` a checkpoint folder.

    Args:
        config: the trial's config: the member (dataset, architecture, seed, epochs, ...) and the drawn ``lr`` and
            ``weight_decay``.
        data: every dataset of the zoo in memory (:func:`load_data`).
        report: called after every epoch with the metrics and a checkpoint folder (None between checkpoints).
        resume: a checkpoint to continue from (:func:`read_checkpoint`).
    """
    from safetensors.torch import save_file

    from geosane.tasks import FineTuning, Recipe, create_model, score_samples

    member = config["member"]
    info = data[data_key(member["dataset"], member.get("exclude"))]
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(member["seed"])
    x_test, y_test = info["test"]
    model = create_model(
        member["arch"],
        info["task"],
        len(info["bands"]),
        len(info["classes"]),
        info["train"][0].shape[-1],
        **member["model_kwargs"],
    )
    if member.get("start_from") and not resume:
        started = start_weights(model, member, info)
        log.info("%s starts from %s: %s", member["stem"], member["start_from"], started)
    epochs, checkpoints = member_epochs(config, member)
    recipe = Recipe(epochs, config["lr"], member["batch_size"], config["weight_decay"])
    tuning = FineTuning(model, info["train"], info["task"], recipe, member["seed"])
    start = 1
    if resume:
        model.load_state_dict(resume["model"])
        tuning.restore(resume["state"])
        start = int(resume["state"]["epoch"]) + 1
    metric = "test_accuracy" if info["task"] == "classification" else "test_miou"
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        loss = tuning.epoch()
        metrics = {"epoch": epoch, "train_loss": loss, "epoch_seconds": time.perf_counter() - began}
        if epoch not in checkpoints:
            report(metrics, None)
            continue
        metrics[metric] = score_samples(model, info["task"], x_test, y_test, len(info["classes"]))
        with tempfile.TemporaryDirectory() as folder:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, Path(folder) / "model.safetensors")
            torch.save({**tuning.state(), "epoch": epoch}, Path(folder) / "train_state.pt")
            (Path(folder) / "member.json").write_text(
                json.dumps(
                    {
                        **member,
                        "epochs": epochs,
                        "lr": config["lr"],
                        "weight_decay": config["weight_decay"],
                        "epoch": epoch,
                        "metrics": {metric: metrics[metric], "test_samples": len(x_test)},
                    }
                )
            )
            report(metrics, folder)


def member_epochs(config: dict[str, Any], member: dict[str, Any]) -> tuple[int, list[int]]:
    """A member's epochs and checkpoint epochs: the group's, or, where the zoo's search draws ``epochs`` per lineage,
    the drawn count (at most the group's), with checkpoints past it moved to its last epoch.

    Args:
        config: the trial's config (the drawn values).
        member: the member.

    Returns:
        Epochs and the epochs to checkpoint at.
    """
    epochs = min(int(config.get("epochs", member["epochs"])), member["epochs"])
    if epochs == member["epochs"]:
        return epochs, list(member["checkpoint_epochs"])
    return epochs, sorted({*(e for e in member["checkpoint_epochs"] if e < epochs), epochs})


def start_weights(model: torch.nn.Module, member: dict[str, Any], info: dict[str, Any]) -> str:
    """A member's model started from its group's pretrained weights (read safely), the stem on the data's bands.

    Args:
        model: the member's fresh task model.
        member: the member (``start_from``, ``arch``).
        info: its data's description (task, bands).

    Returns:
        How the weights were fitted.
    """
    from geosane.collection.sources import load
    from geosane.tasks import start_from

    source = load(member["start_from"])
    return start_from(model, member["arch"], info["task"], source.state_dict, (source.bands, list(info["bands"])))


# ------------------------------------------------------------------------------------------- driver


def run_zoo(config: ZooConfig, out: str, storage: str, data_root: str | None = None, progress: bool = True) -> list:
    """Run (or resume) the zoo's Tune experiment, then add every checkpoint to the collection at ``out``.

    Args:
        config: the zoo.
        out: the collection.
        storage: Tune's experiment storage.
        data_root: where the data lives.
        progress: show progress bars.

    Returns:
        The records of the checkpoints added.

    Raises:
        GeoSANEError: trials failed (the first error named).
    """
    import ray
    from ray import tune

    from geosane.collection import Collection

    storage = absolute(storage)
    data = load_data(config, data_root)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(train_member, data=data), {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    )
    sources = []
    for index, group in enumerate(config.groups):  # one Tune experiment per group, each resumable on its own
        results = fit_group(config, index, trainable, storage, progress)
        errors = [r.error for r in results if r.error]
        if errors:
            raise GeoSANEError(f"{len(errors)} {group.dataset} trial(s) failed; first error: {errors[0]}")
        sources += [checkpoint_source(c, data, config) for r in results for c, _ in r.best_checkpoints]
    sources.sort(key=lambda s: s.name)
    from geosane.tokenizer import TokenizerConfig

    collection = Collection(out)
    tokenizer = collection.config() or (TokenizerConfig(config.token_size) if config.token_size else None)
    return collection.add(sources, tokenizer, total=len(sources), progress=progress)


def fit_group(config: ZooConfig, index: int, trainable, storage: str, progress: bool):
    """Run, or resume, the Tune experiment of group ``index`` and return its results."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from geosane.tuning import run_experiment, slug, trial_name

    group = config.groups[index]
    return run_experiment(
        trainable,
        storage,
        f"{config.name}-{index}-{slug(group.dataset)}",
        search_space(config, group),
        f"zoo {group.dataset}",
        progress,
        keep_checkpoints=None,
        search_alg=BasicVariantGenerator(random_state=config.seed),
        max_concurrent_trials=config.max_concurrent or None,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )


def checkpoint_source(checkpoint, data: dict[str, dict[str, Any]], config: ZooConfig):
    """A collection source from one zoo checkpoint, with everything the manifest should say about it."""
    from geosane.collection.sources import ModelSource, content_sha256, timm_family

    with checkpoint.as_directory() as folder:
        saved = read_checkpoint(folder)
    member, state_dict = saved["member"], saved["model"]
    info = data[data_key(member["dataset"], member.get("exclude"))]
    return ModelSource(
        name=f"{member['arch']}-{member['dataset']}-s{member['seed']}-e{member['epoch']}",
        uri=f"zoo:{config.name}/{member['dataset']}/{member['arch']}/seed{member['seed']}/epoch{member['epoch']}",
        sha256=content_sha256(state_dict),
        state_dict=state_dict,
        family=timm_family(member["arch"]),
        task=info["task"],
        in_chans=len(info["bands"]),
        num_classes=len(info["classes"]),
        licence=config.licence,
        modality=info["modality"],
        bands=list(info["bands"]),
        metrics=member["metrics"],
        tags={
            "arch": member["arch"],
            "dataset": member["dataset"],
            "epoch": str(member["epoch"]),
            "epochs": str(member["epochs"]),
            "seed": str(member["seed"]),
            "lr": f"{member['lr']:.3g}",
            "weight_decay": f"{member['weight_decay']:.3g}",
            "zoo": config.name,
            **({"train_limit": str(member["train_limit"])} if member.get("train_limit") else {}),
            **({"exclude": ",".join(member["exclude"])} if member.get("exclude") else {}),
            "lineage": f"{config.name}/{member['dataset']}/{member['arch']}/seed{member['seed']}",
            **({"started_from": member["start_from"]} if member.get("start_from") else {}),
        },
    )
