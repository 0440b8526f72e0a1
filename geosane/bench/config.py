"""A benchmark sweep's settings (``sweeps/bench-*.yaml``): its tasks, their budgets and initializations, and the
resources of each trial. Every name in a sweep is checked before anything runs."""

from __future__ import annotations

import math
from dataclasses import field, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from geosane.autoencoder.registry import DEFAULT, is_shipped
from geosane.config import Seed, load_config, make, settings
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig
from geosane.registry import Registry
from geosane.spec import parse_spec
from geosane.tasks import Distillation

__all__ = [
    "INITIALIZATIONS",
    "SPECIALISTS",
    "VARIANT_SETTINGS",
    "Asha",
    "BenchConfig",
    "BenchTask",
    "Initialization",
    "check_prompt_weights",
    "parse_initialization",
]

#: An initialization builds a trial's model from its :class:`~geosane.bench.context.TrialContext` and says where the
#: model came from (recorded with the results).
Initialization = Callable[[Any], tuple[nn.Module, dict[str, Any]]]
#: The initializations by name. ``geosane.bench.initializations`` registers them and ``geosane.bench.specialists``
#: the specialists (real pretrained models for one dataset each); the package imports both, so a config is validated
#: against full registries (importing ``geosane.bench.config`` runs ``geosane.bench`` first).
INITIALIZATIONS: Registry[Initialization] = Registry("initialization")
SPECIALISTS: Registry[Initialization] = Registry("specialist")


#: Generation settings an initialization's name may change (``generated?bandwidth=0.2&search_steps=3``), so that one
#: sweep measures each setting against the same baselines, seeds and intervals.
VARIANT_SETTINGS = ("anchors", "sampling", "bandwidth", "candidates", "search_steps", "search_lr")
SETTING_TYPES = {
    "anchors": str,  # generated?anchors=started_from=pretrained:efficientnet_lite0 (an anchor query, or prompt)
    "sampling": str,
    "bandwidth": float,
    "candidates": int,
    "search_steps": int,
    "search_lr": float,
}


def parse_initialization(name: str) -> tuple[str, dict[str, Any]]:
    """An initialization's registered name and the generation settings it changes (only ``generated`` takes any).

    Args:
        name: ``generated?bandwidth=0.2&candidates=8``, or a plain name.

    Returns:
        The registered name and the typed settings.

    Raises:
        GeoSANEError: settings on another initialization, an unknown setting, or a value generation refuses.
    """
    spec = parse_spec(name, options={key: SETTING_TYPES[key] for key in VARIANT_SETTINGS})
    if not spec.options:
        return spec.name, {}
    if spec.name != "generated":
        raise GeoSANEError(f"{name!r}: only generated takes settings (generated?bandwidth=0.2)")
    make(GenerateConfig, prompt="timm:resnet18", data="checked", **spec.typed)  # a refused value is named now
    return spec.name, spec.typed


def check_prompt_weights(task: BenchTask, key: str, data_root: str | None) -> None:
    """A task's ``prompt_weights`` as a trial would read them, before Ray starts: there, safe to read (no pickled
    code) and loading strictly into the task's architecture for its bands and classes.

    Args:
        task: the task.
        key: how to name it in messages.
        data_root: where its data lies.

    Raises:
        GeoSANEError: naming the key and what is wrong.
    """
    from geosane import datasets
    from geosane.collection.sources import load_timm

    data = datasets.get(task.data, data_root)
    options = {"in_chans": data.in_chans, "num_classes": data.num_classes, **task.model_kwargs}
    text = "&".join(f"{k}={','.join(map(str, v)) if isinstance(v, list | tuple) else v}" for k, v in options.items())
    try:
        load_timm(f"timm:{task.arch}?{text}&pretrained={task.prompt_weights}")
    except GeoSANEError as exc:
        raise GeoSANEError(f"{key}.prompt_weights: {exc}") from None


@settings
class BenchTask:
    """One downstream task: a dataset, the target architecture, its fine-tuning budget and what it is compared with."""

    data: str  # a registered dataset (with options: cloudmask?holdout=landsat5), npz:PATH or imagefolder:DIR
    arch: str  # the target (prompt) architecture, a timm name
    initializations: list[str]
    epochs: int | None = None  # the budget in passes over the train split, or:
    steps: int | None = None  # the budget in optimizer steps (whole epochs, at least this many steps)
    lr: float | list[float] = 0.001  # a list is a grid: each initialization gets the best on the selection split
    batch_size: int = 32
    label: str | None = None  # its name in tables and plots (default: data)
    held_out: bool = False  # checked: no collection model may have trained on the task's test images
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm arguments, e.g. narrower channels
    image_size: int | None = None  # detection: images are resized to this square (default: the architecture's)
    anchors: str | None = None  # generation's anchor query (default: every collection model of the architecture)
    prompt_weights: str | None = None  # local weights for `prompt` (default: the best collection model elsewhere)
    train_limit: int | None = None
    test_limit: int | None = None
    selection_limit: int | None = 500
    seeds: list[Seed] | None = None  # this task's seeds (default: the sweep's): fewer where a trial is expensive

    @property
    def name(self) -> str:
        """The task's name in tables and plots: its label, or its dataset."""
        return self.label or self.data

    @property
    def lrs(self) -> list[float]:
        """The learning rates tried (one, or the grid)."""
        return list(self.lr) if isinstance(self.lr, list) else [self.lr]

    def budgeted(self, train_size: int) -> BenchTask:
        """This task with its budget in epochs: ``steps`` become the fewest whole epochs that take at least that many
        optimizer steps (as :class:`~geosane.tasks.FineTuning` counts them: ``train_size // batch_size`` a pass).

        Args:
            train_size: images in the train split.

        Returns:
            The task, ``epochs`` set.
        """
        if self.steps is None:
            return self
        return replace(self, epochs=math.ceil(self.steps / max(1, train_size // self.batch_size)))


@settings
class Asha:
    """Tune's ASHA scheduler on the selection-split metric: weak trials stop after ``grace_period`` epochs."""

    grace_period: int = 1
    reduction_factor: float = 3.0


@settings
class BenchConfig:
    """A benchmark sweep (``sweeps/bench-*.yaml``)."""

    name: str
    tasks: list[BenchTask]
    autoencoder: str = DEFAULT  # for `generated`: a run, its final/, or a shipped one
    seeds: list[Seed] = field(default_factory=lambda: [0, 1, 2])
    collection: str | None = None  # default: the autoencoder's training collection
    weight_decay: float = 0.01
    flips: bool = True  # the augmentation every initialization gets
    candidates: int = GenerateConfig.candidates  # generated candidates ranked on the selection split per trial
    bandwidth: float = GenerateConfig.bandwidth
    distillation: Distillation = field(default_factory=Distillation)
    scheduler: Asha | None = None  # none: every curve runs to the end
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0  # 0: as many as resources allow
    data_root: str | None = None
    # the learning rate is chosen on the selection split of the first `tuning_seeds` seeds, and the other seeds run at
    # each initialization's chosen rate only (None: every seed runs the whole grid)
    tuning_seeds: int | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, check_data: bool = True) -> BenchConfig:
        """A sweep from YAML; every name in it is checked before anything runs (see :meth:`validate`).

        Args:
            path: a sweep, e.g. ``sweeps/bench-small.yaml``.
            check_data: also open every dataset (its files must be there).

        Returns:
            The sweep.

        Raises:
            GeoSANEError: a malformed file or any name that does not resolve.
        """
        config = load_config(path, cls)
        config.validate(str(path), check_data)
        return config

    def validate(self, where: str = "bench config", check_data: bool = True) -> None:
        """Unknown initializations, architectures, datasets and impossible pairings are errors naming the key.

        Args:
            where: what to call the config in messages.
            check_data: open every registered dataset with its options.

        Raises:
            GeoSANEError: the first problem, naming the key.
        """
        import timm

        from geosane import datasets

        if not self.seeds or any(t.seeds == [] for t in self.tasks):
            raise GeoSANEError(f"{where}: seeds is empty")
        for index, task in enumerate(self.tasks):
            key = f"{where}: tasks[{index}]"
            try:
                unknown = [i for i in task.initializations if parse_initialization(i)[0] not in INITIALIZATIONS]
            except GeoSANEError as exc:
                raise GeoSANEError(f"{key}.initializations: {exc}") from None
            if unknown:
                raise GeoSANEError(f"{key}.initializations: unknown {unknown}; known: {', '.join(INITIALIZATIONS)}")
            if not timm.is_model(task.arch):
                raise GeoSANEError(f"{key}.arch: unknown timm architecture {task.arch!r}")
            if (task.epochs is None) == (task.steps is None):
                raise GeoSANEError(f"{key}: give the budget as epochs or as steps (one of them)")
            if (task.epochs or task.steps or 0) < 1 or not task.lrs or min(task.lrs) <= 0 or task.batch_size < 1:
                raise GeoSANEError(f"{key}: epochs or steps, lr (every one of a grid) and batch_size must be positive")
            if self.tuning_seeds is not None and self.tuning_seeds < 1:
                raise GeoSANEError(f"{where}: tuning_seeds must be >= 1 (or left out: every seed tunes)")
            name, _ = datasets.parse_dataset(task.data)
            if task.data.startswith(("npz:", "imagefolder:")):
                kind = datasets.get(task.data, self.data_root).task  # the user's files say what the task is
            elif name in datasets.REGISTRY:
                kind = datasets.REGISTRY[name].task
                if check_data:  # the data is there and the options are right
                    datasets.get(task.data, self.data_root)
            else:
                raise GeoSANEError(
                    f"{key}.data: unknown dataset {name!r}; known: {', '.join(datasets.list_datasets())}, "
                    "npz:PATH, imagefolder:DIR"
                )
            if "specialist" in task.initializations and name not in SPECIALISTS:
                raise GeoSANEError(
                    f"{key}.initializations: no specialist for {task.data}; there is one for {', '.join(SPECIALISTS)}"
                )
            searched = [i for i in task.initializations if parse_initialization(i)[1].get("search_steps")]
            if searched and kind != "classification":
                raise GeoSANEError(f"{key}.initializations: {searched[0]} searches on a classification loss")
            for init in ("pruned", "distilled", "foundation"):
                if init in task.initializations and kind != "classification":
                    raise GeoSANEError(f"{key}.initializations: {init} is for classification, {task.data} is {kind}")
            if task.prompt_weights:
                check_prompt_weights(task, key, self.data_root)

    def resolved(self) -> BenchConfig:
        """This sweep with every local path absolute: Tune runs each trial in its own folder."""
        from geosane.storage import absolute

        def weights(spec: str) -> str:
            return spec if spec.startswith("pretrained:") else absolute(spec)

        def data(spec: str) -> str:
            kind, sep, path = spec.partition(":")
            return f"{kind}:{absolute(path)}" if sep and kind in ("npz", "imagefolder") else spec

        tasks = [
            replace(t, data=data(t.data), prompt_weights=t.prompt_weights and weights(t.prompt_weights))
            for t in self.tasks
        ]
        return replace(
            self,
            autoencoder=self.autoencoder if is_shipped(self.autoencoder) else absolute(self.autoencoder),
            collection=self.collection and absolute(self.collection),
            data_root=self.data_root and absolute(self.data_root),
            tasks=tasks,
        )

    def seeds_of(self, task: BenchTask, tuning: bool) -> list[int]:
        """A task's seeds that tune the learning rate (the first ``tuning_seeds``), or those that run at the chosen
        rate only (the rest; none where every seed tunes).

        Args:
            task: the task.
            tuning: the tuning seeds (True) or the rest (False).

        Returns:
            The seeds.
        """
        seeds = task.seeds or self.seeds
        cut = len(seeds) if self.tuning_seeds is None else self.tuning_seeds
        return seeds[:cut] if tuning else seeds[cut:]

    def trials(
        self, lrs: dict[tuple[int, str], list[float]] | None = None, phase: str = "grid"
    ) -> list[dict[str, Any]]:
        """Trials, each a plain dict (what Tune records per trial): task x initialization x learning rate x seed.

        Args:
            lrs: per (task index, initialization) the learning rates to run (default: the task's grid).
            phase: ``grid`` (the grid on the tuning seeds), ``edge`` (one step past a grid's edge, same seeds) or
                ``rest`` (the other seeds at the chosen rate).

        Returns:
            The trials.
        """
        from geosane.tuning import slug

        def stem(task: BenchTask, init: str, lr: float, seed: int) -> str:
            grid = f"-lr{lr:g}" if len(task.lrs) > 1 else ""
            return f"{slug(task.name)}-{init}{grid}-s{seed}"

        return [
            {
                "task": index,
                "label": task.name,
                "init": init,
                "lr": lr,
                "seed": seed,
                "phase": phase,
                "stem": stem(task, init, lr, seed),
            }
            for index, task in enumerate(self.tasks)
            for init in task.initializations
            for lr in (task.lrs if lrs is None else lrs.get((index, init), []))
            for seed in self.seeds_of(task, phase != "rest")
        ]
