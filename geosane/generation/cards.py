"""Model cards: what a generated model was made from and how (JSON for programs, Markdown for people), and writing
models with their cards, each file to a temporary name first."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from geosane import storage
from geosane.generation.config import GenerateConfig, Generated
from geosane.generation.ranking import RANKINGS
from geosane.version import software_versions

if TYPE_CHECKING:  # the candidates' module writes the cards
    from geosane.generation.candidates import Plan

__all__ = ["base_card", "candidate_card", "card_markdown", "diversity", "write_generated"]


def base_card(
    config: GenerateConfig, plan: Plan, autoencoder_url: str, collection: dict[str, Any] | None
) -> dict[str, Any]:
    """What every generated model of one call shares in its card.

    Args:
        config: the generation's settings.
        plan: its shared plan.
        autoencoder_url: where the autoencoder was loaded from.
        collection: the anchors' collection and version.

    Returns:
        The shared part of the card.
    """
    import datetime

    info = plan.autoencoder.info
    return {
        "format": "geosane.generated",
        "prompt": {
            "uri": config.prompt,
            "arch": plan.prompt.arch,
            "in_chans": plan.prompt.in_chans,
            "num_classes": plan.prompt.num_classes,
            "weights": config.prompt_weights,
        },
        "task": config.task,
        "autoencoder": {
            "url": autoencoder_url,
            "settings": asdict(plan.autoencoder.config),
            "step": info.get("step"),
            "trained_on": info.get("train", {}).get("collection") or info.get("collection"),
        },
        "collection": collection,
        "anchors": [{"name": a.name, "fitted": a.fitted, **a.record} for a in plan.anchors],
        "sampling": {"method": config.sampling, "bandwidth": config.bandwidth, "candidates": config.candidates},
        "seed": config.seed,
        "head": "decoded from the anchors" if plan.head_kept else "re-initialized (seeded)",
        "data": config.data,
        "software": software_versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def candidate_card(info: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """What one candidate's card adds: its index and anchor, BatchNorm and selection.

    Args:
        info: :func:`~geosane.generation.candidates.make_candidate`'s notes.
        plan: the shared plan.

    Returns:
        The candidate's part of the card.
    """
    target = plan.target
    card: dict[str, Any] = {
        "candidate": info["candidate"],
        "anchor": info["anchor"],
        "distance_to_anchor": info.get("distance"),  # normalized, in weight space (new heads left out)
    }
    if target is None:
        card["batchnorm"] = "not re-estimated: no target data (statistics are the anchor's)"
        card["selection"] = "not ranked: no target data"
        return card
    card["batchnorm"] = (
        f"re-estimated in train mode on {len(target.unlabeled)} unlabeled {target.name} train images "
        f"({info['batchnorm_layers']} layers)"
    )
    card["selection"] = {
        "score": info["selection_score"],
        "ranked_by": RANKINGS[plan.config.task if plan.config.task != "classification" else plan.head_kept],
        "split": f"{target.name} selection ({len(target.selection_x)} samples)",
    }
    if "search" in info:  # the latent search's labelled images and time (geosane.generation.search)
        card["search"] = {**info["search"], "split": f"{target.name} selection"}
    return card


def diversity(results: list[tuple[dict[str, Any], dict[str, Any]]], head: tuple[str, ...]) -> dict[str, Any]:
    """How different a generation's candidates are: each one's normalized distance to its anchor, the pairwise
    normalized distances between candidates, and how often two candidates' selection-split predictions disagree.

    Args:
        results: every candidate's weights and notes (``distance``, ``predictions``).
        head: key prefixes left out of distances (a new head).

    Returns:
        Means and ranges of the three, with how many candidates and pairs they come from.
    """
    from itertools import combinations

    import torch

    from geosane.generation.anchors import backbone_weights
    from geosane.generation.candidates import weight_distance

    def summary(values: list[float]) -> dict[str, float] | None:
        values = [v for v in values if v == v]  # not NaN
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)} if values else None

    pairs = list(combinations(range(len(results)), 2))
    weights = [backbone_weights(w) for w, _ in results]
    predictions: list[Any] = [info.get("predictions") for _, info in results]
    return {
        "candidates": len(results),
        "distance_to_anchor": summary([info.get("distance", float("nan")) for _, info in results]),
        "pairwise_distance": summary([weight_distance(weights[i], weights[j], head) for i, j in pairs]),
        "prediction_disagreement": summary(
            [
                float(torch.ne(predictions[i], predictions[j]).float().mean())
                for i, j in pairs
                if predictions[i] is not None and predictions[j] is not None
            ]
        ),
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: what was generated from what, how, and how it ranked."""
    prompt, ae = card["prompt"], card["autoencoder"]
    selection = card["selection"]
    score = (
        f"{selection['score']:.4f} ({selection['ranked_by']}, {selection['split']})"
        if isinstance(selection, dict)
        else selection
    )
    anchors = "\n".join(f"- {a['name']} ({a['fitted']})" for a in card["anchors"])
    return "\n".join(
        [
            f"# GeoSANE generated {prompt['arch']}: rank {card['rank']}",
            "",
            f"- prompt: `{prompt['uri']}` (in_chans {prompt['in_chans']}, num_classes {prompt['num_classes']})",
            f"- task: {card['task']}; head: {card['head']}",
            f"- autoencoder: {ae['url']} (step {ae['step']}, trained on {ae['trained_on']})",
            f"- sampling: {card['sampling']['method']}, bandwidth {card['sampling']['bandwidth']}, "
            f"candidate {card['candidate']} of {card['sampling']['candidates']}, seed {card['seed']}",
            f"- BatchNorm: {card['batchnorm']}",
            f"- selection: {score}",
            f"- distance to its anchor (normalized, weight space): {card.get('distance_to_anchor')}",
            f"- across candidates: {card.get('diversity')}",
            f"- GeoSANE {card['software'].get('geosane')}, created {card['created']}",
            "",
            "## Anchors",
            "",
            anchors,
            "",
        ]
    )


def write_generated(generated: list[Generated], out: str) -> list[str]:
    """``out/model-<rank>.safetensors`` with ``.json`` and ``.md`` cards; each file is written to a temporary name
    and moved into place, the cards after the weights.

    Args:
        generated: :func:`~geosane.generation.generate`'s models.
        out: a folder (local or any fsspec URL).

    Returns:
        The weights files written.
    """
    from safetensors.torch import save

    written = []
    for item in generated:
        stem = storage.join(out, f"model-{item.card['rank']}")
        weights = save(item.state_dict)
        card = {**item.card, "weights_sha256": hashlib.sha256(weights).hexdigest()}  # what the card vouches for
        storage.write_bytes(stem + ".safetensors", weights)
        storage.write_bytes(stem + ".json", json.dumps(card, indent=1).encode())
        storage.write_bytes(stem + ".md", card_markdown(item.card).encode())
        written.append(stem + ".safetensors")
    return written
