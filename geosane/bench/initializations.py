"""Initializations: each builds a trial's model and says where it came from. A new one is one registered function.

| name | the model |
|---|---|
| ``scratch`` | the architecture's default timm initialization |
| ``generated`` | the generation API's top candidate for the trial's prompt and seed, ranked on the selection split |
| ``prompt`` | the prompt's own weights, or the best-recorded collection model of the architecture elsewhere |
| ``anchor``, ``decoded``, ``noised``, ``soup`` | the baselines that separate the latent space from copying |
| ``merged`` | the anchors merged by DARE and task arithmetic onto the checkpoint they started from |
| ``foundation`` | a real remote-sensing foundation model's encoder with a new head (``geosane.bench.foundation``) |
| ``pruned`` | the best larger collection model of the task and architecture, structurally pruned to the target's size |
| ``distilled`` | the target from scratch, trained with a larger collection model's soft targets |
| ``specialist`` | a real pretrained remote-sensing model for the task (``geosane.bench.specialists``) |
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from geosane.bench.config import INITIALIZATIONS, SPECIALISTS, parse_initialization
from geosane.bench.context import TrialContext, load_into
from geosane.bench.pruning import prune_to
from geosane.errors import GeoSANEError
from geosane.spec import parse_spec
from geosane.tasks import parameters, score

__all__ = ["INITIALIZATIONS", "build_initial_model", "prompt_record", "recorded_score"]


def build_initial_model(name: str, context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The model initialization ``name`` builds for a trial, with its notes (source, parameters).

    Args:
        name: a registered initialization, ``generated`` with settings of its own (``generated?bandwidth=0.2``).
        context: the trial's task, data, seed and collection.

    Returns:
        The model, and notes (``source``, ``parameters``).
    """
    base, options = parse_initialization(name)
    model, notes = INITIALIZATIONS[base](replace(context, options=options))
    return model, {**notes, "parameters": parameters(model)}


@INITIALIZATIONS.register("scratch")
def scratch(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The architecture's default timm initialization (seeded)."""
    return context.target_model(), {"source": "timm default initialization"}


@INITIALIZATIONS.register("generated")
def generated(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The generation API's top candidate for the trial's prompt and seed, ranked on the selection split only."""
    settings = context.generation_settings()
    (best,) = context.generator().generate(use_ray=False)
    model = best.model  # use_ray=False: the trial is the unit of parallelism; its candidates run in it
    if context.data.task == "detection" and context.task.image_size:  # the generated backbone in the bench's detector
        model = context.target_model()
        load_into(
            model, "detection", {k.removeprefix("detector.backbone.body."): v for k, v in best.state_dict.items()}
        )
    card = best.card
    changed = "".join(f", {k}={v}" for k, v in context.options.items())  # a variant's own settings
    return model, {
        "source": f"generated from {len(card.anchors)} anchor(s) ({settings['anchors']}{changed}), "
        f"candidate {card.candidate} of {settings['candidates']}",
        "selection": card.selection.score if card.selection else None,
        "distance": card.distance_to_anchor,
        "chosen_from": settings["candidates"],
    }


def best_record(context: TrialContext, records: list[Any], what: str, own_classes: bool = True) -> Any:
    """The record whose model scores best on the task's *selection* split (never test): with its own head where it
    learned the task's classes, else by a linear probe on its frozen features (fitted on the train split).

    Args:
        context: the trial.
        records: the candidates.
        what: how to name them in an error.
        own_classes: whether they learned the task's classes.

    Returns:
        The best record (ties: the first by name).

    Raises:
        GeoSANEError: no candidates.
    """
    from geosane.tasks.probes import linear_probe, pooled_features

    if not records:
        raise GeoSANEError(f"no collection model for {what} in {context.collection}")
    data, scored = context.data, []
    for record in records:
        model = collection_model(context, record)
        if own_classes:
            value = score(model, data, "selection")
        else:
            train, selection = pooled_features(model, data.train[0]), pooled_features(model, data.selection[0])
            value = linear_probe(train, data.train[1].numpy(), selection, data.selection[1].numpy(), context.seed)
        scored.append((value, record.name, record))
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


def domain_models(context: TrialContext) -> tuple[list[Any], bool]:
    """Collection models of the task's domain, and whether they learned its classes: those trained on the task's data
    for its classes where there are any; for a held-out task, those of the same dataset's other classes (the zoo's
    models of EuroSAT classes 0-4 for classes 5-9), whose heads are replaced.

    Args:
        context: the trial.

    Returns:
        The records, and whether they learned the task's classes.
    """
    own = trained_on_task(context)
    if own:
        return own, True
    name = parse_spec(context.data.spec).name
    others = [
        r
        for r in context.records()
        if "arch" in r.tags
        and r.task == context.data.task
        and r.tags.get("dataset")
        and parse_spec(r.tags["dataset"]).name == name
    ]
    return others, False


def recorded_score(record: Any) -> float | None:
    """A collection model's recorded score on its own test split in its task's metric (``test_accuracy``,
    ``test_miou``), never another number it records (such as ``test_samples``)."""
    from geosane.tasks import metric_name

    value = record.metrics.get(f"test_{metric_name(record.task)}")
    return None if value is None else float(value)


def prompt_record(context: TrialContext) -> Any:
    """The collection model ``prompt`` starts from: the task's architecture trained as a classifier on another
    dataset (or other classes of it: ``eurosat_rgb?classes=0-4`` for ``eurosat_rgb?classes=5-9``), with the best
    recorded score (ties: the first by name).

    Args:
        context: the trial.

    Returns:
        The record.

    Raises:
        GeoSANEError: no such model (give ``prompt_weights``).
    """
    candidates = [
        r
        for r in context.records()
        if r.tags.get("arch") == context.task.arch
        and r.tags.get("dataset") != context.data.spec  # another dataset, or other classes of one
        and r.task == "classification"
        and recorded_score(r) is not None
    ]
    if not candidates:
        raise GeoSANEError(
            f"prompt: no {context.task.arch} classifier trained on another dataset in {context.collection}; "
            "give prompt_weights"
        )
    return min(candidates, key=lambda r: (-(recorded_score(r) or 0.0), r.name))


@INITIALIZATIONS.register("prompt")
def prompt(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The prompt's own weights: local pretrained weights when given; otherwise the collection model of the
    architecture trained on another dataset with the best recorded score (:func:`prompt_record`), fitted to the
    task's bands as generation fits an anchor and made ready the same way (head rule, BatchNorm re-estimation)."""
    if context.task.prompt_weights:
        generator = context.generator(anchors="prompt", prompt_weights=context.task.prompt_weights)
        what = f"local weights {context.task.prompt_weights}"
    else:
        record = prompt_record(context)
        generator = context.generator(anchors=f"id={record.id}")
        what = f"collection model {record.name} (recorded {recorded_score(record):.3f} on {record.tags.get('dataset')}"
        what += f"; {generator.anchors[0].fitted})"
    model, info = generator.make_ready(generator.anchors[0].state_dict)
    weights = model.state_dict()
    return context.ready_model(generator, weights), {"source": what, "selection": info.get("selection_score")}


@INITIALIZATIONS.register("pruned")
def pruned(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The best larger collection model of the task's domain and the target's family (selection split), structurally
    pruned to the target's size (a Lite2 pruned to a Lite0's parameters; a larger ViT pruned is no lighter ResNet).
    A model of the domain's other classes (a held-out task) gets a seeded new head first."""
    from geosane.collection.sources import timm_family

    target = parameters(context.target_model())
    family = timm_family(context.task.arch)
    domain, own_classes = domain_models(context)
    larger = [r for r in domain if r.num_params > target and timm_family(r.tags["arch"]) == family]
    record = best_record(context, larger, f"{family} of {context.data.spec} larger than {target:,}", own_classes)
    model: Any = collection_model(context, record)  # a timm classifier
    if not own_classes:
        torch.manual_seed(context.seed)
        model.reset_classifier(context.data.num_classes)
    example = context.data.train[0][:2]
    small, ratio = prune_to(model, target, example, [model.get_classifier()])
    head = "" if own_classes else ", a new head for the task's classes"
    what = f"{record.name} ({record.num_params:,} parameters) pruned by {ratio:.2f} (DepGraph, L2){head}"
    return small, {"source": what, "chosen_from": len(larger)}


@INITIALIZATIONS.register("distilled")
def distilled(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """The target from scratch; fine-tuning adds the soft targets of the best larger collection model of the task's
    domain (selection split) to the labels. A teacher of the domain's other classes (a held-out task) answers through
    a linear head fitted on its frozen features of the task's train split. The teacher rides along as
    ``model.teacher`` (not a parameter of the student)."""
    from geosane.tasks.probes import pooled_features, probe_head

    model = context.target_model()
    target = parameters(model)
    domain, own_classes = domain_models(context)
    larger = [r for r in domain if r.num_params > target]
    record = best_record(context, larger, f"{context.data.spec} larger than {target:,} parameters", own_classes)
    teacher: Any = collection_model(context, record)
    if not own_classes:
        features = pooled_features(teacher, context.data.train[0])
        head = probe_head(features, context.data.train[1].numpy(), context.data.num_classes, context.seed)
        teacher.reset_classifier(context.data.num_classes)
        teacher.get_classifier().load_state_dict(head.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    object.__setattr__(model, "teacher", teacher)  # not registered: the student's state dict stays its own
    probe = "" if own_classes else ", through a linear head fitted on its features of the train split"
    what = f"timm default initialization, distilled from {record.name} ({record.num_params:,}){probe}"
    return model, {"source": what, "chosen_from": len(larger)}


@INITIALIZATIONS.register("specialist")
def specialist(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
    """A real pretrained remote-sensing model for the task (:data:`SPECIALISTS`)."""
    return SPECIALISTS[parse_spec(context.data.spec).name](context)
