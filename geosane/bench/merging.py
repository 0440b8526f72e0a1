"""A baseline from the model-merging literature: ``merged``, the anchors merged with DARE and task arithmetic.

Models fine-tuned from one checkpoint share its units, so their *task vectors* (fine-tuned weights less the
checkpoint's) can be added (task arithmetic, Ilharco et al., ICLR 2023). DARE (Yu et al., ICML 2024, the merge the
GeoSANE paper compares with) first drops each task vector's entries at random with probability ``p`` and rescales
the rest by ``1 / (1 - p)``, which keeps their expectation and lessens the interference between models. The
checkpoint is the one the anchors' ``started_from`` tag names (the zoo records it, ``sweeps/zoo-finetune.yaml``),
fitted to the prompt as an anchor is.

The drop rate and the scaling (the task vectors' mean or their sum) are chosen on the selection split, like every
other choice of the bench; the notes say how many settings it was chosen from.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from geosane.bench.ablations import BASELINES, Weights, as_initialization, notes
from geosane.bench.initializations import INITIALIZATIONS
from geosane.errors import GeoSANEError
from geosane.generation import Generator

__all__ = ["DROP_RATES", "SCALINGS", "dare_merge", "merged_baseline", "started_from"]

#: DARE's drop rates tried (0: task arithmetic alone).
DROP_RATES = (0.0, 0.5, 0.9)
#: How the task vectors are added: their mean (a soup of task vectors) or their sum (task arithmetic with scale 1).
SCALINGS = ("mean", "sum")


def dare_merge(
    base: Mapping[str, torch.Tensor],
    models: Sequence[Weights],
    drop: float,
    scaling: str,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``base`` plus the models' task vectors, each first thinned by DARE (entries dropped with probability ``drop``,
    the rest scaled by ``1 / (1 - drop)``), added as their mean or their sum. A floating-point tensor the base lacks
    in that shape (a classifier of other classes) is the models' mean; integer buffers come from the first model.

    Args:
        base: the checkpoint the models were fine-tuned from, in their shapes.
        models: the fine-tuned models.
        drop: DARE's drop rate, in [0, 1).
        scaling: ``mean`` or ``sum``.
        generator: seeds the drops.

    Returns:
        The merged weights.
    """
    scale = 1.0 / len(models) if scaling == "mean" else 1.0
    merged = {}
    for key, first in models[0].items():
        if not first.is_floating_point():
            merged[key] = first
            continue
        if key not in base or base[key].shape != first.shape:
            merged[key] = torch.stack([m[key].double() for m in models]).mean(0).to(first.dtype)
            continue
        origin = base[key].double()
        total = torch.zeros_like(origin)
        for model in models:
            vector = model[key].double() - origin
            if drop:
                keep = torch.rand(vector.shape, generator=generator, dtype=torch.float64) >= drop
                vector = vector * keep / (1.0 - drop)
            total += vector
        merged[key] = (origin + scale * total).to(first.dtype)
    return merged


def started_from(generator: Generator) -> str:
    """The one checkpoint every anchor was fine-tuned from (their ``started_from`` tag).

    Raises:
        GeoSANEError: an anchor without the tag, or anchors of different checkpoints.
    """
    starts = {a.record.get("tags", {}).get("started_from") for a in generator.anchors}
    if None in starts or len(starts) != 1:
        raise GeoSANEError(
            f"merged needs anchors fine-tuned from one checkpoint (their started_from tag, as sweeps/zoo-finetune.yaml "
            f"records it); these {len(generator.anchors)} started from {sorted(map(str, starts))}"
        )
    return str(next(iter(starts)))


def merged_baseline(generator: Generator) -> tuple[Weights, dict[str, Any]]:
    """The anchors merged by DARE and task arithmetic onto the checkpoint they started from, the drop rate and
    scaling chosen on the selection split (ties: the first of :data:`DROP_RATES` x :data:`SCALINGS`)."""
    from geosane.collection.sources import load

    uri = started_from(generator)
    source = load(uri)
    base, how = generator.fit(source.state_dict, source.in_chans, source.bands)
    models = [dict(a.state_dict) for a in generator.anchors]
    best: tuple[float, Weights, dict[str, Any], str] | None = None
    for drop in DROP_RATES:
        for scaling in SCALINGS:
            seeded = torch.Generator().manual_seed(generator.config.seed)
            model, info = generator.make_ready(dare_merge(base, models, drop, scaling, seeded))
            score = info.get("selection_score", 0.0)
            if best is None or score > best[0]:
                best = (score, model.state_dict(), info, f"drop {drop}, {scaling} of task vectors")
    assert best is not None
    _, weights, info, chosen = best
    what = f"{len(models)} anchor(s) merged onto {uri} ({how}) by DARE and task arithmetic: {chosen}"
    return weights, notes(what, info, chosen_from=len(DROP_RATES) * len(SCALINGS))


BASELINES.add("merged", merged_baseline)
INITIALIZATIONS.add("merged", as_initialization(merged_baseline))
