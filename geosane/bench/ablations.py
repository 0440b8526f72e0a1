"""Baselines that separate the latent space from copying, each built from the anchors ``generated`` uses.

Each is fitted to the prompt the same way and made task-ready by the same step
(:meth:`geosane.generation.Generator.make_ready`: the head rule, BatchNorm re-estimated on unlabeled target images,
the selection-split score), through the generator's public methods only:

| name | the model |
|---|---|
| ``anchor`` | the best anchor itself, chosen among all anchors on the selection split |
| ``decoded`` | that anchor through the autoencoder, encode -> decode, no noise (bandwidth 0) |
| ``noised`` | that anchor plus Gaussian noise on its weights, per tensor as far from it (relative to the tensor's norm)
  as the generated model is from its own anchor (the trial generates it, with the trial's seed, to measure that) |
| ``soup`` | the uniform average of the anchors' weights |

The first three are the memorization study's baselines (arXiv 2506.07998: a checkpoint, the checkpoint plus noise);
``soup`` is its other one (averaged checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from geosane.bench.context import TrialContext
from geosane.bench.initializations import INITIALIZATIONS
from geosane.generation import Generator
from geosane.registry import Registry
from geosane.tasks import backbone_weights, is_weight, weight_distance

__all__ = [
    "BASELINES",
    "Weights",
    "as_initialization",
    "best_anchor",
    "generated_distances",
    "noise_like",
    "notes",
    "soup_of",
]

Weights = Mapping[str, torch.Tensor]


#: Where the best anchor's choice per generation is remembered (a JSON file per generation's settings): the choice
#: does not depend on the seed, and every trial of a sweep (each its own process) would otherwise score every anchor
#: again.
CHOICES = Path(os.environ.get("GEOSANE_CACHE", Path.home() / ".cache" / "geosane")) / "best-anchor"


def plan_key(generator: Generator) -> str:
    """What the best anchor depends on: the generation settings less the seed, the collection version, the
    autoencoder (its run information) and the head rule; as a SHA-256."""
    from dataclasses import asdict, replace

    what = {
        "settings": asdict(replace(generator.config, seed=0)),
        "collection": generator.source,
        "autoencoder": generator.autoencoder.info,
        "head_kept": generator.head_kept,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def best_anchor(generator: Generator) -> tuple[int, Weights, dict[str, Any]]:
    """Every anchor made task-ready and scored on the selection split; the best one (ties: the first by name). The
    score does not depend on the seed (BatchNorm statistics come from a fixed order of images; a new head plays no
    part in a nearest-class-mean score), so the choice is remembered (:data:`CHOICES`) for the generation's other seeds.

    Args:
        generator: the trial's generation.

    Returns:
        The anchor's index, its task-ready weights and its notes (selection score).
    """
    index = chosen_anchor(generator)
    model, info = generator.make_ready(generator.anchors[index].state_dict)
    return index, model.state_dict(), info


def chosen_anchor(generator: Generator) -> int:
    """The index of the selection-best anchor (:func:`best_anchor`), remembered per generation's settings; nothing
    else is built."""
    remembered = CHOICES / f"{plan_key(generator)}.json"
    names = [a.name for a in generator.anchors]
    choice = json.loads(remembered.read_text()) if remembered.exists() else None
    if choice is None or choice.get("anchors") != names:
        scores = [generator.make_ready(a.state_dict)[1].get("selection_score", 0.0) for a in generator.anchors]
        best = min(range(len(scores)), key=lambda i: (-scores[i], names[i]))
        choice = {"anchors": names, "scores": scores, "best": best}
        remembered.parent.mkdir(parents=True, exist_ok=True)
        temporary = remembered.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(choice))
        os.replace(temporary, remembered)
    return int(choice["best"])


def generated_distances(generator: Generator) -> tuple[dict[str, float], float, str]:
    """The generated model of the trial (generation's own candidates, ranking and seed) and how far each of its
    tensors moved from its anchor, relative to the anchor's tensor (``||g - a|| / ||a||``), and overall.

    Args:
        generator: the trial's generation.

    Returns:
        Relative distances per tensor, the normalized distance overall, and the generated model's anchor.
    """
    results, _ = generator.candidates(use_ray=False)
    model, info = max(results, key=lambda r: r[1].get("selection_score", 0.0))
    anchor = next(a for a in generator.anchors if a.name == info["anchor"])
    generated = backbone_weights(model.state_dict())
    distances = {
        key: weight_distance({key: generated[key]}, {key: value})
        for key, value in anchor.state_dict.items()
        if key in generated and is_weight(key, value, generator.new_head) and float(value.norm()) > 0
    }
    return distances, weight_distance(generated, anchor.state_dict, generator.new_head), anchor.name


def noise_like(weights: Weights, distances: dict[str, float], generator: torch.Generator) -> Weights:
    """``weights`` plus Gaussian noise, per tensor at the relative distance ``distances[key]`` (the noise's norm is
    that fraction of the tensor's norm); tensors not named stay as they are.

    Args:
        weights: the weights to noise.
        distances: relative distance per tensor.
        generator: seeds the noise.

    Returns:
        The noised weights.
    """
    out = dict(weights)
    for key, distance in distances.items():
        value = weights[key].double()
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
        out[key] = (value + noise * (distance * float(value.norm()) / float(noise.norm()))).to(weights[key].dtype)
    return out


def soup_of(states: list[Weights]) -> Weights:
    """The uniform average of same-shaped weights (integer buffers, such as BatchNorm's batch counts, from the
    first).

    Args:
        states: the weights to average.

    Returns:
        The average.
    """
    return {
        key: torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value
        for key, value in states[0].items()
    }


def notes(what: str, info: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What an ablation's model records: where it came from, its selection score, its distance to the best anchor.

    Args:
        what: where the model came from.
        info: its notes from :meth:`~geosane.generation.Generator.make_ready` (the selection score).
        **more: more to record (``distance``, ``chosen_from``).

    Returns:
        The notes.
    """
    return {"source": what, "selection": info.get("selection_score"), **more}


def anchor_baseline(generator: Generator) -> tuple[Weights, dict[str, Any]]:
    """The best anchor itself, fitted to the prompt as generation fits it and made ready the same way."""
    index, weights, info = best_anchor(generator)
    chosen = generator.anchors[index]
    what = f"{chosen.name} ({chosen.fitted}), best of {len(generator.anchors)} anchor(s) on the selection split"
    return weights, notes(what, info, distance=0.0, chosen_from=len(generator.anchors))


def decoded_baseline(generator: Generator) -> tuple[Weights, dict[str, Any]]:
    """The best anchor through the autoencoder without noise: what encoding and decoding alone do to it."""
    index = chosen_anchor(generator)
    chosen = generator.anchors[index]
    model, info = generator.make_ready(generator.rebuilt(index))
    weights = model.state_dict()
    distance = weight_distance(backbone_weights(weights), chosen.state_dict, generator.new_head)
    what = f"{chosen.name} encoded and decoded (bandwidth 0), best of {len(generator.anchors)} anchor(s)"
    return weights, notes(what, info, distance=distance, chosen_from=len(generator.anchors))


def noised_baseline(generator: Generator) -> tuple[Weights, dict[str, Any]]:
    """The best anchor plus Gaussian noise (seeded by the generation's seed), per tensor as far from it (relative to the
    tensor's norm) as the trial's generated model is from its own anchor: the same step size in weight space, in a
    random direction instead of the decoder's."""
    distances, generated, source = generated_distances(generator)
    index = chosen_anchor(generator)
    chosen = generator.anchors[index]
    shaped = {k: v for k, v in distances.items() if k in chosen.state_dict}
    noise = torch.Generator().manual_seed(generator.config.seed)
    model, info = generator.make_ready(noise_like(chosen.state_dict, shaped, noise))
    weights = model.state_dict()
    distance = weight_distance(backbone_weights(weights), chosen.state_dict, generator.new_head)
    what = (
        f"{chosen.name} plus Gaussian noise at the generated model's per-tensor distance (normalized "
        f"{generated:.4f}, from {source})"
    )
    return weights, notes(what, info, distance=distance, matched=generated, chosen_from=len(generator.anchors))


def soup_baseline(generator: Generator) -> tuple[Weights, dict[str, Any]]:
    """The uniform average of the anchors' weights (a uniform model soup), made ready as every other one."""
    model, info = generator.make_ready(soup_of([a.state_dict for a in generator.anchors]))
    weights = model.state_dict()
    return weights, notes(f"uniform average of {len(generator.anchors)} anchor(s)", info)


#: The baselines by name: task-ready weights and notes from a generation (``benchmarks/generation_quality.py``
#: calls them outside the bench too).
BASELINES: Registry[Callable[[Generator], tuple[Weights, dict[str, Any]]]] = Registry(
    "baseline",
    {
        "anchor": anchor_baseline,
        "decoded": decoded_baseline,
        "noised": noised_baseline,
        "soup": soup_baseline,
    },
)


def as_initialization(build: Callable[[Generator], tuple[Weights, dict[str, Any]]]) -> Any:
    """A baseline as a bench initialization: the trial's generator in, the trial's model out."""

    def initialize(context: TrialContext) -> tuple[nn.Module, dict[str, Any]]:
        generator = context.generator()
        weights, what = build(generator)
        return context.ready_model(generator, weights), what

    initialize.__doc__ = build.__doc__
    return initialize


for _name, _build in BASELINES.items():
    INITIALIZATIONS.add(_name, as_initialization(_build))
