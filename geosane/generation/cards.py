"""Model cards: what a generated model was made from and how, as one typed record (:class:`GeneratedCard`, written
as JSON for programs and Markdown for people), and writing models with their cards, each file to a temporary name
first. Every path fills the same fields: a generation without target data has ``batchnorm`` and ``selection`` of
None, never a sentence in their place. The JSON schema is ``docs/generated-card.schema.json``."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from geosane import storage

__all__ = [
    "AnchorCard",
    "AutoencoderOrigin",
    "BatchNormCard",
    "CollectionPin",
    "Diversity",
    "GeneratedCard",
    "PromptCard",
    "Sampling",
    "SearchCard",
    "Selection",
    "card_markdown",
    "write_generated",
]


class Card(BaseModel):
    """A part of a card: its fields only, checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptCard(Card):
    """The prompt as given and as built."""

    uri: str
    arch: str
    in_chans: int
    num_classes: int
    weights: str | None  # prompt weights: a file or pretrained:NAME


class AutoencoderOrigin(Card):
    """The autoencoder that generated the model."""

    url: str
    settings: dict[str, Any]
    step: int | None
    trained_on: str | None  # the collection it learned from


class CollectionPin(Card):
    """The collection the anchors were read from, at the version they were read."""

    url: str
    version: int


class AnchorCard(Card):
    """One anchor: its name, how it was fitted to the prompt, and its collection record (none for the prompt)."""

    name: str
    fitted: str
    id: str | None = None
    family: str | None = None
    task: str | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    tags: dict[str, Any] = {}


class Sampling(Card):
    """How latents were drawn."""

    method: str
    bandwidth: float
    candidates: int


class Summary(Card):
    """Mean and range of a measure over candidates or their pairs."""

    mean: float
    min: float
    max: float


class Diversity(Card):
    """How different one generation's candidates are (weight space and selection-split predictions)."""

    candidates: int
    distance_to_anchor: Summary | None
    pairwise_distance: Summary | None
    prediction_disagreement: Summary | None


class BatchNormCard(Card):
    """BatchNorm statistics re-estimated in train mode on unlabeled target images."""

    layers: int
    images: int
    data: str


class Selection(Card):
    """The score that ranked the model, on the target's selection split (never its test split)."""

    score: float
    ranked_by: str
    split: str
    samples: int


class SearchCard(Card):
    """A latent search on the selection split (labelled images and time spent)."""

    steps: int
    images: int
    loss: list[float]
    seconds: float
    split: str


class GeneratedCard(Card):
    """Everything a generated model's card says; the same fields on every path."""

    format: Literal["geosane.generated"] = "geosane.generated"
    rank: int
    candidate: int
    prompt: PromptCard
    task: str
    autoencoder: AutoencoderOrigin
    collection: CollectionPin | None  # None: the prompt itself was the anchor
    anchors: list[AnchorCard]
    anchor: str | None  # the anchor a joint draw was centred on (None: anchors mixed per token or value)
    sampling: Sampling
    seed: int
    head: str
    data: str | None
    generated_by: str
    distance_to_anchor: float | None  # normalized, in weight space, new heads left out
    diversity: Diversity
    batchnorm: BatchNormCard | None  # None: no target data, the statistics are the anchor's
    selection: Selection | None  # None: no target data, not ranked
    search: SearchCard | None = None
    software: dict[str, str]
    created: str
    weights_sha256: str | None = None  # the weights file the card vouches for, once written


def card_markdown(card: GeneratedCard) -> str:
    """The card for people: what was generated from what, how, and how it ranked."""
    prompt, autoencoder, sampling = card.prompt, card.autoencoder, card.sampling
    selection = card.selection
    score = (
        f"{selection.score:.4f} ({selection.ranked_by}, {selection.split}, {selection.samples} samples)"
        if selection
        else "not ranked: no target data"
    )
    batchnorm = (
        f"re-estimated in train mode on {card.batchnorm.images} unlabeled {card.batchnorm.data} train images "
        f"({card.batchnorm.layers} layers)"
        if card.batchnorm
        else "not re-estimated: no target data (statistics are the anchor's)"
    )
    anchors = "\n".join(f"- {a.name} ({a.fitted})" for a in card.anchors)
    return "\n".join(
        [
            f"# GeoSANE generated {prompt.arch}: rank {card.rank}",
            "",
            f"- prompt: `{prompt.uri}` (in_chans {prompt.in_chans}, num_classes {prompt.num_classes})",
            f"- task: {card.task}; head: {card.head}",
            f"- autoencoder: {autoencoder.url} (step {autoencoder.step}, trained on {autoencoder.trained_on})",
            f"- sampling: {sampling.method}, bandwidth {sampling.bandwidth}, candidate {card.candidate} of "
            f"{sampling.candidates}, seed {card.seed}",
            f"- BatchNorm: {batchnorm}",
            f"- selection: {score}",
            f"- distance to its anchor (normalized, weight space): {card.distance_to_anchor}",
            f"- across candidates: {card.diversity.model_dump()}",
            f"- GeoSANE {card.software.get('geosane')}, created {card.created}",
            "",
            "## Anchors",
            "",
            anchors,
            "",
        ]
    )


def write_generated(generated: list[Any], out: str) -> list[str]:
    """``out/model-<rank>.safetensors`` with ``.json`` and ``.md`` cards; each file is written to a temporary name
    and moved into place, the cards after the weights.

    Args:
        generated: :class:`~geosane.generation.Generated` models.
        out: a folder (local or any fsspec URL).

    Returns:
        The weights files written.
    """
    from safetensors.torch import save

    written = []
    for item in generated:
        stem = storage.join(out, f"model-{item.card.rank}")
        weights = save(item.state_dict)
        card = item.card.model_copy(update={"weights_sha256": hashlib.sha256(weights).hexdigest()})
        storage.write_bytes(stem + ".safetensors", weights)
        storage.write_bytes(stem + ".json", json.dumps(card.model_dump(mode="json"), indent=1).encode())
        storage.write_bytes(stem + ".md", card_markdown(card).encode())
        written.append(stem + ".safetensors")
    return written
