"""Benchmarks as Ray Tune sweeps: generated models against scratch, the prompt, pruning, distillation and a specialist.

``geosane bench --config sweeps/bench-small.yaml --storage URL`` runs one Tune experiment whose trials are the grid
task x initialization x seed. Every trial builds its model with a named initialization (:data:`INITIALIZATIONS`),
scores it before any fine-tuning (epoch 0), fine-tunes it with the task's budget (the same epochs, AdamW, one-cycle
schedule, batch size and flips for every initialization) and reports its metrics after every epoch: on the test
split for the tables, and on the *selection* split for anything that chooses (the optional ASHA scheduler,
the generation's ranking, the teacher of distillation and the model that is pruned). Nothing ranks on test.

Tasks flagged ``held_out`` are checked against the collection first: when any collection model trained on one of
the task's test images (:func:`held_out_problems`), the bench refuses to start. Results (a Parquet table of every
trial and epoch, a Markdown summary, convergence curves, TensorBoard logs, the config and the software versions)
are written by :func:`write_results`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from geosane.config import load_config, settings
from geosane.errors import GeoSANEError

__all__ = [
    "BenchConfig",
    "BenchRun",
    "BenchTask",
    "Asha",
    "Distillation",
    "INITIALIZATIONS",
    "SPECIALISTS",
    "TaskData",
    "TrialContext",
    "build_initial_model",
    "check_held_out",
    "collection_of",
    "held_out_problems",
    "load_task",
    "metric_name",
    "prune_to",
    "run_bench",
    "score",
    "summary_table",
    "write_results",
]

log = logging.getLogger(__name__)

#: The epochs the summary table shows besides the last one.
TABLE_EPOCHS = (0, 1, 5)


# ------------------------------------------------------------------------------------------- settings


@settings
class BenchTask:
    """One downstream task: a dataset, the target architecture, its fine-tuning budget and what it is compared with."""

    data: str  # a registered dataset (with options: cloudmask?holdout=landsat5), npz:PATH or imagefolder:DIR
    arch: str  # the target (prompt) architecture, a timm name
    initializations: list[str]
    epochs: int
    lr: float
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

    @property
    def name(self) -> str:
        return self.label or self.data


@settings
class Asha:
    """Tune's ASHA scheduler on the selection-split metric: weak trials stop after ``grace_period`` epochs."""

    grace_period: int = 1
    reduction_factor: float = 3.0


@settings
class Distillation:
    """Knowledge distillation: ``alpha`` of the loss from the teacher's soft targets at ``temperature``."""

    temperature: float = 4.0
    alpha: float = 0.5


@settings
class BenchConfig:
    """A benchmark sweep (``sweeps/bench-*.yaml``)."""

    name: str
    autoencoder: str  # a trained autoencoder (run folder or final/), for `generated`
    tasks: list[BenchTask]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    collection: str | None = None  # default: the autoencoder's training collection
    weight_decay: float = 0.01
    flips: bool = True  # the augmentation every initialization gets
    candidates: int = 4  # generated candidates ranked on the selection split per trial
    bandwidth: float = 0.05
    distillation: Distillation = field(default_factory=Distillation)
    scheduler: Asha | None = None  # none: every curve runs to the end
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0  # 0: as many as resources allow
    data_root: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, check_data: bool = True) -> BenchConfig:
        """A sweep from YAML; every name in it is checked before anything runs (see :meth:`validate`)."""
        config = load_config(path, cls)
        config.validate(str(path), check_data)
        return config

    def validate(self, where: str = "bench config", check_data: bool = True) -> None:
        """Unknown initializations, architectures, datasets and impossible pairings are errors naming the key."""
        import timm

        from geosane import datasets

        if not self.seeds:
            raise GeoSANEError(f"{where}: seeds is empty")
        for index, task in enumerate(self.tasks):
            key = f"{where}: tasks[{index}]"
            unknown = [i for i in task.initializations if i not in INITIALIZATIONS]
            if unknown:
                raise GeoSANEError(f"{key}.initializations: unknown {unknown}; known: {', '.join(INITIALIZATIONS)}")
            if not timm.is_model(task.arch):
                raise GeoSANEError(f"{key}.arch: unknown timm architecture {task.arch!r}")
            if task.epochs < 1 or task.lr <= 0 or task.batch_size < 1:
                raise GeoSANEError(f"{key}: epochs, lr and batch_size must be positive")
            name, _ = datasets.parse_spec(task.data)
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
            for init in ("pruned", "distilled"):
                if init in task.initializations and kind != "classification":
                    raise GeoSANEError(f"{key}.initializations: {init} is for classification, {task.data} is {kind}")

    def resolved(self) -> BenchConfig:
        """This sweep with every local path absolute: Tune runs each trial in its own folder."""
        from geosane.storage import absolute

        def data(spec: str) -> str:
            kind, sep, path = spec.partition(":")
            return f"{kind}:{absolute(path)}" if sep and kind in ("npz", "imagefolder") else spec

        tasks = [
            replace(t, data=data(t.data), prompt_weights=t.prompt_weights and absolute(t.prompt_weights))
            for t in self.tasks
        ]
        return replace(
            self,
            autoencoder=absolute(self.autoencoder),
            collection=self.collection and absolute(self.collection),
            data_root=self.data_root and absolute(self.data_root),
            tasks=tasks,
        )

    def trials(self) -> list[dict[str, Any]]:
        """The grid: task x initialization x seed, each a plain dict (what Tune records per trial)."""
        return [
            {"task": index, "label": task.name, "init": init, "seed": seed}
            for index, task in enumerate(self.tasks)
            for init in task.initializations
            for seed in self.seeds
        ]


# ------------------------------------------------------------------------------------------- data and metrics


@dataclass
class TaskData:
    """One task's splits in memory, with what a model needs to know about them."""

    spec: str
    task: str  # classification | segmentation | detection
    bands: list[str]
    classes: list[str]
    train: tuple[Any, Any]
    selection: tuple[Any, Any]
    test: tuple[Any, Any]

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_task(task: BenchTask, data_root: str | None) -> TaskData:
    from geosane import datasets

    dataset = datasets.get(task.data, data_root)
    parts = {
        split: dataset.load(split, limit)
        for split, limit in (
            ("train", task.train_limit),
            ("selection", task.selection_limit),
            ("test", task.test_limit),
        )
    }
    return TaskData(
        spec=task.data,
        task=dataset.task,
        bands=list(dataset.bands),
        classes=list(dataset.classes),
        **{split: (samples.x, samples.y) for split, samples in parts.items()},
    )


def metric_name(task: str) -> str:
    return {"classification": "accuracy", "multilabel": "map", "segmentation": "miou", "detection": "map50"}[task]


def detection_target(target: Any) -> dict[str, torch.Tensor]:
    """A detection target as torchvision takes it: datasets give ``{"boxes", "labels"}``, or boxes of one class."""
    if isinstance(target, dict):
        return target
    return {"boxes": target, "labels": torch.ones(len(target), dtype=torch.int64)}


@torch.no_grad()
def score(model: nn.Module, data: TaskData, split: str, batch: int = 128) -> float:
    """Top-1 accuracy, dataset-level mAP (multi-label), mean IoU (classes present in prediction or target; 255
    ignored) or mAP@0.5 (detection), by torchmetrics."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex, MultilabelAveragePrecision

    x, y = getattr(data, split)
    device = device_of(model)
    model.eval()
    metric: Any
    if data.task == "detection":
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy")
        for image, boxes in zip(x, y, strict=True):
            (found,) = to_device(model([image.to(device)]), torch.device("cpu"))
            metric.update([found], [detection_target(boxes)])
        return float(metric.compute()["map_50"])
    if data.task == "multilabel":
        average_precision = MultilabelAveragePrecision(data.num_classes, average="macro")
        for first in range(0, len(x), batch):
            average_precision.update(
                model(x[first : first + batch].to(device)).sigmoid().cpu(), y[first : first + batch].long()
            )
        return float(average_precision.compute())
    if data.task == "classification":
        metric = MulticlassAccuracy(data.num_classes, average="micro")
    else:  # per class, NaN where a class is in neither prediction nor target; those are left out of the mean
        metric = MulticlassJaccardIndex(data.num_classes, average="none", ignore_index=255, zero_division=math.nan)
    for first in range(0, len(x), batch):
        metric.update(model(x[first : first + batch].to(device)).argmax(1).cpu(), y[first : first + batch])
    value = metric.compute()
    return float(value.nanmean()) if data.task == "segmentation" else float(value)


def device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- initializations


@dataclass
class TrialContext:
    """What an initialization may use: the task, its data, the trial's seed and the sweep's settings."""

    config: BenchConfig
    task: BenchTask
    data: TaskData
    seed: int
    collection: str | None = None  # URL of the collection, read at ``version``
    version: int | None = None

    def prompt_uri(self) -> str:
        options = {"in_chans": self.data.in_chans, "num_classes": self.data.num_classes, **self.task.model_kwargs}
        text = {k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for k, v in options.items()}
        return f"timm:{self.task.arch}?" + "&".join(f"{k}={v}" for k, v in text.items())

    def target_model(self) -> nn.Module:
        """The task's architecture with timm's default initialization for the trial's seed."""
        from geosane.tasks import create_model

        torch.manual_seed(self.seed)
        kwargs = dict(self.task.model_kwargs)
        if self.data.task == "detection" and self.task.image_size:
            kwargs["image_size"] = self.task.image_size
        image = self.data.train[0][0].shape[-1]
        return create_model(self.task.arch, self.data.task, self.data.in_chans, self.data.num_classes, image, **kwargs)

    def records(self) -> list[Any]:
        from geosane.collection import Collection

        if not self.collection:
            raise GeoSANEError("this initialization needs a collection; the autoencoder names none")
        return Collection(self.collection, self.version).records()

    def export(self, record: Any) -> dict[str, torch.Tensor]:
        from geosane.collection import Collection

        return Collection(self.collection or "", self.version).export(record)


#: An initialization builds the trial's model and says where it came from (recorded with the results).
Initialization = Callable[[TrialContext], tuple[nn.Module, dict[str, Any]]]
INITIALIZATIONS: dict[str, Initialization] = {}
#: A specialist is a real pretrained model for one dataset, built by name.
SPECIALISTS: dict[str, Initialization] = {}


def initialization(name: str) -> Callable[[Initialization], Initialization]:
    def register(build: Initialization) -> Initialization:
        INITIALIZATIONS[name] = build
        return build

    return register


def build_initial_model(name: str, context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The model initialization ``name`` builds for a trial, with its notes (source, parameters)."""
    model, notes = INITIALIZATIONS[name](context)
    return model, {**notes, "parameters": parameters(model)}


def load_into(model: nn.Module, task: str, state_dict: dict[str, torch.Tensor]) -> None:
    """A classifier's weights into a task model: all of it for classification, the backbone under a new head else."""
    from geosane.generation import load_backbone

    if task == "classification":
        model.load_state_dict(state_dict, strict=True)
    else:
        backbone: Any = model.backbone  # every task model names its timm feature extractor so
        load_backbone(backbone, state_dict)


@initialization("scratch")
def scratch(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The architecture's default timm initialization (seeded)."""
    return context.target_model(), {"source": "timm default initialization"}


@initialization("generated")
def generated(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The generation API's top candidate for the trial's prompt and seed, ranked on the selection split only."""
    from geosane.generation import generate

    anchors = context.task.anchors or f"arch={context.task.arch}"
    (best,) = generate(
        context.config.autoencoder,
        context.prompt_uri(),
        task=context.data.task,
        anchors=anchors,
        collection=context.collection,
        candidates=context.config.candidates,
        bandwidth=context.config.bandwidth,
        data=context.data.spec,
        data_root=context.config.data_root,
        seed=context.seed,
        use_ray=False,  # the trial is the unit of parallelism; its candidates run in it
    )
    model = best.model
    if context.data.task == "detection" and context.task.image_size:  # the generated backbone in the bench's detector
        model = context.target_model()
        load_into(
            model, "detection", {k.removeprefix("detector.backbone.body."): v for k, v in best.state_dict.items()}
        )
    selection = best.card["selection"]
    return model, {
        "source": f"generated from {len(best.card['anchors'])} anchor(s) ({anchors}), candidate "
        f"{best.card['candidate']} of {context.config.candidates}",
        "selection": selection["score"] if isinstance(selection, dict) else None,
    }


def best_record(context: TrialContext, records: list[Any], what: str) -> Any:
    """The record whose model scores best on the task's *selection* split (never test)."""
    if not records:
        raise GeoSANEError(f"no collection model for {what} in {context.collection}")
    scored = []
    for record in records:
        model = collection_model(context, record)
        scored.append((score(model, context.data, "selection"), record.name, record))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return scored[0][2]


def collection_model(context: TrialContext, record: Any) -> nn.Module:
    """A collection model of the task's dataset, rebuilt as the task model it was trained as."""
    from geosane.tasks import create_model

    arch = record.tags["arch"]
    model = create_model(arch, record.task, record.in_chans, record.num_classes, context.data.train[0].shape[-1])
    model.load_state_dict(context.export(record), strict=True)
    return model.eval()


def trained_on_task(context: TrialContext) -> list[Any]:
    """Collection models trained on the task's dataset, for its classes (teachers and models to prune)."""
    return [
        r
        for r in context.records()
        if r.tags.get("dataset") == context.data.spec
        and r.num_classes == context.data.num_classes
        and r.task == context.data.task
        and "arch" in r.tags
    ]


@initialization("prompt")
def prompt(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The prompt's own weights: local pretrained weights when given; otherwise the collection model of the
    architecture trained on another dataset with the best recorded metric (on that dataset), fitted to the task's
    bands (by band name where the bands are known) with a new head."""
    from geosane.generation import GenerateConfig, build_prompt, fit_to_prompt

    built = build_prompt(
        GenerateConfig(prompt=context.prompt_uri(), prompt_weights=context.task.prompt_weights, seed=context.seed)
    )
    model = context.target_model()
    if context.task.prompt_weights:
        load_into(model, context.data.task, built.state_dict)
        return model, {"source": f"local weights {context.task.prompt_weights}"}
    dataset_name = context.data.spec.split("?")[0]
    candidates = [
        r
        for r in context.records()
        if r.tags.get("arch") == context.task.arch
        and r.tags.get("dataset", "").split("?")[0] != dataset_name
        and r.task == "classification"
        and r.metrics
    ]
    if not candidates:
        raise GeoSANEError(
            f"prompt: no {context.task.arch} classifier trained on another dataset in {context.collection}; "
            "give prompt_weights"
        )
    record = max(candidates, key=lambda r: (max(r.metrics.values()), r.name))
    fitted, how = fit_to_prompt(context.export(record), built, record.in_chans, (record.bands, context.data.bands))
    load_into(model, context.data.task, fitted)
    metric = ", ".join(f"{k} {v:.3f}" for k, v in record.metrics.items() if k != "test_samples")
    return model, {"source": f"collection model {record.name} ({metric} on {record.tags.get('dataset')}; {how})"}


def prune_to(model: nn.Module, target: int, example: torch.Tensor, ignored: list[nn.Module]) -> tuple[nn.Module, float]:
    """Structurally prune ``model`` (torch-pruning's DepGraph, L2 magnitude of channel groups) until it has about
    ``target`` parameters: the pruning ratio is found by bisection on fresh copies. Returns the model and the ratio."""
    import copy

    import torch_pruning as tp

    def pruned(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model)
        ignore = [dict(candidate.named_modules())[n] for n, m in model.named_modules() if m in ignored]
        pruner = tp.pruner.MetaPruner(
            candidate,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignore,
        )
        pruner.step()
        return candidate

    low, high = 0.0, 0.95
    best = model
    for _ in range(12):
        middle = (low + high) / 2
        best = pruned(middle)
        count = parameters(best)
        if abs(count - target) <= 0.02 * target:
            break
        low, high = (middle, high) if count > target else (low, middle)
    return best, middle


@initialization("pruned")
def pruned(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The best larger collection model of the task (selection split), structurally pruned to the target's size."""
    target = parameters(context.target_model())
    larger = [r for r in trained_on_task(context) if r.num_params > target]
    record = best_record(context, larger, f"{context.data.spec} larger than {target:,} parameters")
    model: Any = collection_model(context, record)  # a timm classifier
    example = context.data.train[0][:2]
    small, ratio = prune_to(model, target, example, [model.get_classifier()])
    return small, {"source": f"{record.name} ({record.num_params:,} parameters) pruned by {ratio:.2f} (DepGraph, L2)"}


@initialization("distilled")
def distilled(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The target from scratch; fine-tuning adds the soft targets of the best larger collection model (selection
    split) to the labels. The teacher rides along as ``model.teacher`` (not a parameter of the student)."""
    model = context.target_model()
    target = parameters(model)
    larger = [r for r in trained_on_task(context) if r.num_params > target]
    record = best_record(context, larger, f"{context.data.spec} larger than {target:,} parameters")
    teacher = collection_model(context, record)
    for p in teacher.parameters():
        p.requires_grad_(False)
    object.__setattr__(model, "teacher", teacher)  # not registered: the student's state dict stays its own
    return model, {"source": f"timm default initialization, distilled from {record.name} ({record.num_params:,})"}


@initialization("specialist")
def specialist(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """A real pretrained remote-sensing model for the task (:data:`SPECIALISTS`)."""
    return SPECIALISTS[context.data.spec.split("?")[0]](context)


class Renormalize(nn.Module):
    """Inputs normalized with the task's statistics, re-normalized as a pretrained model expects them."""

    def __init__(self, ours: tuple[list[float], list[float]], theirs: tuple[list[float], list[float]]) -> None:
        super().__init__()
        view = (1, -1, 1, 1)
        scale = torch.tensor(ours[1]) / torch.tensor(theirs[1])
        shift = (torch.tensor(ours[0]) - torch.tensor(theirs[0])) / torch.tensor(theirs[1])
        self.register_buffer("scale", scale.view(view))
        self.register_buffer("shift", shift.view(view))

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def ukis_csmask(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """ukis-csmask 1.0.0 ``model_6b_l1c``: a U-Net with an EfficientNet-B4 encoder trained upstream for cloud and
    shadow masks on Sentinel-2 and Landsat, read from the registry wheel's ONNX initializers and run in PyTorch
    (segmentation_models_pytorch), with the model's own input normalization in front."""
    import fsspec
    import segmentation_models_pytorch as smp

    from geosane import datasets, pretrained
    from geosane.sources import read_onnx

    uri = "pretrained:ukis-csmask-1.0.0#ukis-csmask-1.0.0/model_6b_l1c"
    location = pretrained.location(uri)
    with fsspec.open(location, "rb") as f:
        weights = {k.removeprefix("model."): v.float() for k, v in read_onnx(f.read(), uri).items()}
    with fsspec.open(location.replace(".onnx", ".json"), "r") as f:
        statistics = json.load(f)["data"]["dataset_statistics"]["img"]
    torch.manual_seed(context.seed)
    unet = smp.Unet(encoder_name="efficientnet-b4", encoder_weights=None, in_channels=6, classes=3)
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if unexpected or any("_conv_head" not in k and "_bn1" not in k for k in missing):
        raise GeoSANEError(f"{uri}: weights do not fit the U-Net (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info = datasets.get(context.data.spec, context.config.data_root).splits()
    model = nn.Sequential(Renormalize((info["mean"], info["std"]), (statistics[0], statistics[1])), unet)
    return model, {"source": f"{uri} (upstream training data may include these scenes)"}


SPECIALISTS["cloudmask"] = ukis_csmask


# ------------------------------------------------------------------------------------------- held out


def training_keys(record: Any, data_root: str | None, cache: dict[str, set[str]]) -> set[str] | None:
    """The image keys a collection model trained on (from its ``dataset``, ``train_limit`` and ``exclude`` tags), or
    None when the record does not say (a model collected from elsewhere)."""
    from geosane import datasets
    from geosane.zoo import training_ids

    spec = record.tags.get("dataset")
    if not spec:
        return None
    exclude = [e for e in record.tags.get("exclude", "").split(",") if e]
    limit = int(record.tags["train_limit"]) if record.tags.get("train_limit") else None
    key = f"{spec}|{limit}|{','.join(sorted(exclude))}"
    if key not in cache:
        dataset = datasets.get(spec, data_root)
        ids = training_ids(spec, exclude, data_root, limit)
        cache[key] = {k for i in ids for k in dataset.image_keys(i)}
    return cache[key]


def held_out_problems(records: list[Any], task: BenchTask, data_root: str | None) -> tuple[list[str], list[str]]:
    """Why ``task`` is not held out from the collection (one line per model that trained on one of its test images),
    and the models whose training data the collection does not record."""
    from geosane import datasets

    dataset = datasets.get(task.data, data_root)
    test = {k for i in dataset.splits()["test"] for k in dataset.image_keys(i)}
    problems, unknown, cache = [], [], {}  # type: ignore[var-annotated]
    for record in records:
        keys = training_keys(record, data_root, cache)
        if keys is None:
            unknown.append(record.name)
            continue
        shared = sorted(keys & test)
        if shared:
            problems.append(
                f"{record.name} trained on {record.tags['dataset']}, which shares {len(shared)} image(s) with the "
                f"test split of {task.data} (e.g. {shared[0]})"
            )
    return problems, unknown


# ------------------------------------------------------------------------------------------- one trial


def train_step(model: nn.Module, context: TrialContext, batch: Any, generator: torch.Generator) -> torch.Tensor:
    """The loss of one batch, with the flips every initialization gets (labels and boxes follow)."""
    data, config = context.data, context.config
    x, y = to_device(batch, device_of(model))
    flip = config.flips and bool(torch.rand(1, generator=generator) < 0.5)
    if data.task == "detection":
        images, targets = [], []
        for image, found in zip(x, y, strict=True):
            target = detection_target(found)
            if flip:  # x' = W - x: xmin and xmax trade places
                width, boxes = image.shape[-1], target["boxes"]
                image = image.flip(-1)
                flipped = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
                target = {**target, "boxes": flipped}
            images.append(image)
            targets.append(target)
        return sum(model(images, targets).values())
    if flip:
        x, y = x.flip(-1), (y.flip(-1) if data.task == "segmentation" else y)
    logits = model(x)
    if data.task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float())
    loss = F.cross_entropy(logits, y, ignore_index=255)
    teacher = getattr(model, "teacher", None)
    if teacher is not None:  # Hinton et al.: soft targets at temperature T, scaled by T^2
        settings = config.distillation
        with torch.no_grad():
            soft = F.softmax(teacher(x) / settings.temperature, dim=1)
        distill = F.kl_div(F.log_softmax(logits / settings.temperature, dim=1), soft, reduction="batchmean")
        loss = (1 - settings.alpha) * loss + settings.alpha * settings.temperature**2 * distill
    return loss


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors, and the lists, tuples and dicts of them that detection uses, on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def batches(data: TaskData, size: int, generator: torch.Generator) -> list[Any]:
    x, y = data.train
    order = torch.randperm(len(x), generator=generator).tolist()
    steps = max(1, len(order) // size)
    picked = [order[i * size : (i + 1) * size] for i in range(steps)]
    if data.task == "detection":
        return [([x[i] for i in p], [y[i] for i in p]) for p in picked]
    return [(x[p], y[p]) for p in picked]


def fine_tune(
    model: nn.Module,
    context: TrialContext,
    report: Callable[[dict[str, Any], dict[str, Any] | None], None],
    resume: dict[str, Any] | None = None,
) -> None:
    """Score at epoch 0, then fine-tune for the task's epochs, scoring and reporting after each (see the module)."""
    task, data = context.task, context.data
    metric = metric_name(data.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU where the trial was given one
    model.to(device)
    if getattr(model, "teacher", None) is not None:
        model.teacher.to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=task.lr, weight_decay=context.config.weight_decay
    )
    steps = max(1, len(data.train[0]) // task.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, task.lr, total_steps=task.epochs * steps)
    generator = torch.Generator().manual_seed(context.seed)
    start = 0
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        start = resume["epoch"] + 1
    for epoch in range(start, task.epochs + 1):
        began, loss = time.perf_counter(), float("nan")
        if epoch > 0:
            model.train()
            for batch in batches(data, task.batch_size, generator):
                value = train_step(model, context, batch, generator)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                loss = value.item()
        metrics = {
            "epoch": epoch,
            "metric": metric,
            "test_score": score(model, data, "test"),
            "selection_score": score(model, data, "selection"),
            "train_loss": loss,
            "epoch_seconds": time.perf_counter() - began,
        }
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch,
        }
        report(metrics, state)


def run_trial(config: dict[str, Any], bench: BenchConfig, data: dict[int, TaskData], collection: dict) -> None:
    """One Tune trial: build the initialization's model, then fine-tune it; resumes from Tune's last checkpoint."""
    from ray import tune

    trial = config["trial"]
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    context = TrialContext(bench, bench.tasks[trial["task"]], data[trial["task"]], trial["seed"], **collection)
    model, notes = build_initial_model(trial["init"], context)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=True)

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        extra = {"source": notes["source"], "parameters": notes["parameters"]}
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder))

    fine_tune(model, context, report, resume)


# ------------------------------------------------------------------------------------------- the sweep


def trial_name(trial: Any) -> str:
    """``eurosat_ms-generated-s0-00003``: readable in Tune's tables and folders."""
    from geosane.tuning import slug

    spec = trial.config["trial"]
    return f"{slug(spec['label'])}-{spec['init']}-s{spec['seed']}-{trial.trial_id.split('_')[-1]}"


def collection_of(config: BenchConfig) -> dict[str, Any]:
    """The collection the sweep reads, pinned at its current version (every trial sees the same models)."""
    from geosane.autoencoder import Autoencoder
    from geosane.collection import Collection

    url = config.collection
    if not url:
        info = Autoencoder.load(config.autoencoder).info
        url = info.get("collection") or info.get("train", {}).get("collection")
    if not url:
        return {"collection": None, "version": None}
    if not Collection(url).exists():
        raise GeoSANEError(f"no collection at {url}")
    return {"collection": url, "version": Collection(url).version}


def check_held_out(config: BenchConfig, collection: dict[str, Any]) -> dict[str, Any]:
    """Refuse a task flagged held out that the collection saw; what the collection does not record is returned."""
    from geosane.collection import Collection

    report: dict[str, Any] = {}
    if not collection["collection"]:
        return report
    records = Collection(collection["collection"], collection["version"]).records()
    for task in config.tasks:
        if not task.held_out:
            continue
        problems, unknown = held_out_problems(records, task, config.data_root)
        if problems:
            raise GeoSANEError(
                f"task {task.name} is marked held_out, but {len(problems)} collection model(s) trained on its test "
                f"images: " + "; ".join(problems[:3])
            )
        report[task.name] = {"checked_models": len(records), "training_data_unrecorded": unknown}
    return report


@dataclass
class BenchRun:
    """A finished sweep: Tune's results, the collection (URL, version) it read and the held-out checks' findings."""

    results: Any  # ray.tune.ResultGrid
    collection: dict[str, Any]
    held_out: dict[str, Any]
    experiment: str


def run_bench(
    config: BenchConfig, storage: str, name: str | None = None, resume: bool = False, progress: bool = True
) -> BenchRun:
    """Run (or, with ``resume``, continue) the sweep's Tune experiment."""
    import ray
    from ray import tune

    from geosane.storage import absolute
    from geosane.tuning import run_experiment

    storage = absolute(storage)
    config = config.resolved()
    name = name or config.name
    experiment = f"{storage.rstrip('/')}/{name}"
    exists = tune.Tuner.can_restore(experiment)
    if exists and not resume:
        raise GeoSANEError(f"a sweep named {name} exists in {storage}: pass --resume to continue it, or another --name")
    collection = collection_of(config)
    held_out = check_held_out(config, collection)
    data = {index: load_task(task, config.data_root) for index, task in enumerate(config.tasks)}
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, bench=config, data=data, collection=collection),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    scheduler = None
    if config.scheduler:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=max(t.epochs for t in config.tasks),
            grace_period=config.scheduler.grace_period,
            reduction_factor=config.scheduler.reduction_factor,
        )
    results = run_experiment(
        trainable,
        storage,
        name,
        {"trial": tune.grid_search(config.trials())},
        f"bench {name}",
        progress,
        keep_checkpoints=1,
        scheduler=scheduler,
        metric="selection_score" if scheduler else None,
        mode="max" if scheduler else None,
        max_concurrent_trials=config.max_concurrent or None,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return BenchRun(results, collection, held_out, experiment)


# ------------------------------------------------------------------------------------------- results


def results_frame(results: Any, config: BenchConfig) -> Any:
    """Every trial and epoch as one table (pandas): task, initialization, seed, epoch, scores, parameters, source."""
    import pandas as pd

    frames, failed = [], []
    for result in results:
        trial = result.config["trial"]
        task = config.tasks[trial["task"]]
        frame = result.metrics_dataframe
        if result.error or frame is None or frame.empty:
            reason = str(result.error).strip().splitlines()[-1] if result.error else "reported nothing"
            failed.append(f"{trial['label']}/{trial['init']}/s{trial['seed']}: {reason}")
            if frame is None or frame.empty:
                continue
        columns = ["epoch", "metric", "test_score", "selection_score", "train_loss", "epoch_seconds", "parameters"]
        frame = frame[[*columns, "source"]].copy()
        frame.insert(0, "seed", trial["seed"])
        frame.insert(0, "initialization", trial["init"])
        frame.insert(0, "arch", task.arch)
        frame.insert(0, "data", task.data)
        frame.insert(0, "task", task.name)
        frames.append(frame)
    if not frames:
        raise GeoSANEError("no trial reported anything; first error: " + (failed[0] if failed else "none"))
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["task", "initialization", "seed", "epoch"]).reset_index(drop=True)
    table.attrs["failed"] = failed
    return table


def summary_table(table: Any) -> Any:
    """Mean and std over seeds per task and initialization at epochs 0, 1, 5 and the last, with parameter counts."""
    import pandas as pd

    rows = []
    for (task, init), group in table.groupby(["task", "initialization"], sort=False):
        last = int(group["epoch"].max())
        row: dict[str, Any] = {
            "task": task,
            "initialization": init,
            "metric": group["metric"].iloc[0],
            "parameters": int(group["parameters"].iloc[0]),
            "seeds": group["seed"].nunique(),
            "last_epoch": last,
        }
        for key, epoch in [*((f"epoch_{e}", e) for e in TABLE_EPOCHS), ("final", last)]:
            at = group[group["epoch"] == epoch]["test_score"]
            row[f"{key}_mean"] = float(at.mean()) if len(at) else float("nan")
            row[f"{key}_std"] = float(at.std(ddof=0)) if len(at) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(summary: Any, config: BenchConfig, info: dict[str, Any]) -> str:
    """The summary for people: one table per task, with where the numbers come from."""

    def cell(row: Any, key: str) -> str:
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        return "-" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"

    lines = [
        f"# Benchmark {info['name']}",
        "",
        f"Test-split scores, mean ± std over seeds {config.seeds}; epoch 0 is before any fine-tuning. Every "
        "initialization of a task gets the same budget (epochs, AdamW, one-cycle schedule, batch size, flips); "
        "anything chosen (generated candidates, the model to prune, the teacher) is chosen on the selection split.",
        "",
        f"- autoencoder: {config.autoencoder}",
        f"- collection: {info['collection']['collection']} at version {info['collection']['version']}",
        f"- software: {', '.join(f'{k} {v}' for k, v in info['software'].items())}",
    ]
    for task in config.tasks:
        rows = summary[summary["task"] == task.name]
        if rows.empty:
            continue
        held = info["held_out"].get(task.name)
        status = (
            f"held out (checked against {held['checked_models']} collection models; "
            f"{len(held['training_data_unrecorded'])} do not record their training data)"
            if held
            else "not held out"
        )
        lines += [
            "",
            f"## {task.name}: {rows['metric'].iloc[0]}, {task.arch}, {task.epochs} epochs, {status}",
            "",
            "| initialization | parameters | epoch 0 | epoch 1 | epoch 5 | final |",
            "|---|---|---|---|---|---|",
        ]
        for _, row in rows.iterrows():
            lines.append(
                f"| {row['initialization']} | {row['parameters']:,} | {cell(row, 'epoch_0')} | {cell(row, 'epoch_1')} "
                f"| {cell(row, 'epoch_5')} | {cell(row, 'final')} |"
            )
        sources = info["sources"].get(task.name, {})
        lines += ["", *(f"- {init}: {source}" for init, source in sources.items())]
    if info.get("failed"):
        lines += ["", "## Failed trials", "", *(f"- {f}" for f in info["failed"])]
    return "\n".join(lines) + "\n"


def plot_curves(table: Any, task: str, path: str) -> None:
    """Test score per epoch, mean over seeds with a band of one std, one line per initialization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table["task"] == task]
    figure, axis = plt.subplots(figsize=(6, 4))
    for init, group in rows.groupby("initialization"):
        stats = group.groupby("epoch")["test_score"].agg(["mean", "std"]).fillna(0)
        axis.plot(stats.index, stats["mean"], marker="o", markersize=3, label=init)
        axis.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
    axis.set_xlabel("fine-tuning epoch")
    axis.set_ylabel(f"test {rows['metric'].iloc[0]}")
    axis.set_title(task)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(run: BenchRun, config: BenchConfig, out: str, name: str) -> dict[str, Any]:
    """Parquet, Markdown, JSON, PNG curves and TensorBoard logs of a finished sweep into the folder ``out`` (a local
    path, or any fsspec URL: they are written locally first, then uploaded)."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    from geosane import storage
    from geosane.tuning import slug
    from geosane.version import software_versions

    remote = "://" in out and not out.startswith("file://")
    folder = Path(tempfile.mkdtemp(prefix="geosane-bench-")) if remote else Path(out.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    table = results_frame(run.results, config)
    summary = summary_table(table)
    sources = {
        task: {init: group["source"].iloc[0] for init, group in rows.groupby("initialization")}
        for task, rows in table.groupby("task")
    }
    info = {
        "name": name,
        "collection": run.collection,
        "held_out": run.held_out,
        "experiment": run.experiment,
        "software": software_versions(
            "ray", "timm", "torchvision", "torchmetrics", "torch-pruning", "segmentation-models-pytorch", "numpy"
        ),
        "sources": sources,
        "failed": table.attrs.get("failed", []),
    }
    written = {}
    for filename, write in (
        ("results.parquet", lambda path: table.to_parquet(path, index=False)),
        ("summary.parquet", lambda path: summary.to_parquet(path, index=False)),
        ("results.md", lambda path: Path(path).write_text(markdown(summary, config, info))),
        ("config.json", lambda path: Path(path).write_text(json.dumps(asdict(config), indent=1))),
        ("run.json", lambda path: Path(path).write_text(json.dumps(info, indent=1, default=str))),
    ):
        temporary = folder / f".{filename}.tmp"
        write(str(temporary))
        os.replace(temporary, folder / filename)
        written[filename] = str(folder / filename)
    for task in summary["task"].unique():
        path = folder / f"curves-{slug(task)}.png"
        plot_curves(table, task, str(path))
        written[path.name] = str(path)
    for (task, init, seed), group in table.groupby(["task", "initialization", "seed"]):
        with SummaryWriter(str(folder / "tensorboard" / slug(task) / f"{init}-s{seed}")) as writer:
            for _, row in group.iterrows():
                writer.add_scalar(f"test/{row['metric']}", row["test_score"], int(row["epoch"]))
                writer.add_scalar(f"selection/{row['metric']}", row["selection_score"], int(row["epoch"]))
                if not math.isnan(row["train_loss"]):
                    writer.add_scalar("train/loss", row["train_loss"], int(row["epoch"]))
    written["tensorboard"] = str(folder / "tensorboard")
    if remote:
        storage.upload(folder, out)
        shutil.rmtree(folder, ignore_errors=True)
        written = {k: storage.join(out, Path(v).relative_to(folder).as_posix()) for k, v in written.items()}
    info["summary"] = summary
    info["written"] = written
    return info
