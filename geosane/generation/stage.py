"""Generation: new, task-ready weights for a prompt architecture, decoded from the autoencoder's latent space.

``generate(autoencoder, "timm:resnet18?in_chans=13&num_classes=10", data="eurosat_ms")`` builds the prompt with
timm, finds its anchors (the prompt itself, or collection models that a metadata query selects and whose weights
fit the prompt's), encodes each anchor in halo windows, draws latents by kernel density around them, decodes,
detokenizes into the prompt's state dict, re-estimates BatchNorm statistics on unlabeled target images, ranks the
candidates on the target's *selection* split and returns the best ``top_k`` as ready modules with a model card.

How a collection model becomes an anchor for a prompt of another shape (DESIGN.md, "Generation"):

* same shapes: its weights as they are;
* a smaller prompt (narrower or shallower, the lightweight targets): every prompt tensor is the leading block of
  the anchor's tensor of the same name ("weight selection"), layers the prompt lacks are dropped;
* another band count: the input convolution's filters go to their bands by name when the anchor's bands are among
  the target's (RGB filters onto B04, B03, B02 of 13 Sentinel-2 bands, the others starting at zero); otherwise it is
  adapted as timm adapts pretrained stems (``adapt_input_conv``: filters repeated over the new bands, rescaled);
* the classifier is decoded with the rest only when every anchor was trained on the target dataset with the
  prompt's classes; otherwise it is re-initialized (seeded), and the card says which.

Anchors are never averaged: independently trained models do not line up unit by unit, so a candidate is one
anchor's latents moved by the kernel (``joint``), or, per token (``token``) or per value (``individual``), a
draw from the anchors' latents at that position plus the kernel.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from geosane.autoencoder import Autoencoder
from geosane.generation.anchors import Anchor, collection_url, find_anchors, keeps_head
from geosane.generation.candidates import Plan, run_candidates
from geosane.generation.cards import base_card, candidate_card, diversity
from geosane.generation.config import GenerateConfig, Generated
from geosane.generation.prompt import build_prompt
from geosane.generation.ranking import load_target

__all__ = ["AnchorCache", "generate", "prepare"]

log = logging.getLogger(__name__)


class AnchorCache:
    """Fitted anchors and their latents kept across generations (a service keeps one): a request with the same
    prompt, anchors, collection version, target bands and seed as an earlier one finds its anchors encoded already,
    whatever its sampling, bandwidth or candidates. The least recently used entries go first."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, tuple[list[Anchor], dict[str, Any] | None, dict[int, Any]]] = OrderedDict()
        self.hits = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> tuple[list[Anchor], dict[str, Any] | None, dict[int, Any]] | None:
        """An entry, counted as a hit, or None."""
        with self.lock:
            if key not in self.entries:
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]

    def put(self, key: tuple, entry: tuple[list[Anchor], dict[str, Any] | None, dict[int, Any]]) -> None:
        """Keep an entry (its latents dict fills as the plan encodes), dropping the oldest beyond ``size``.

        Args:
            key: what the anchors depend on (:func:`anchor_key`).
            entry: the fitted anchors, where they came from, and their latents by index.
        """
        with self.lock:
            self.entries[key] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


def prepare(
    autoencoder: Autoencoder | str, prompt: str, cache: AnchorCache | None = None, **settings: Any
) -> tuple[Plan, str]:
    """Everything a generation's candidates share, checked before anything is generated: the prompt, the target
    data, the anchors fitted to the prompt, and the head rule (the bench's anchor-based baselines start here too).

    Args:
        autoencoder: a trained autoencoder, or where to load one.
        prompt: ``timm:NAME[?in_chans=C&num_classes=K]``.
        cache: anchors and latents kept from earlier generations, and kept for later ones.
        **settings: :class:`GenerateConfig` fields.

    Returns:
        The plan, and where the autoencoder came from.

    Raises:
        GeoSANEError: a bad setting, prompt, anchor query or target data.
    """
    config = GenerateConfig(prompt=prompt, **settings)
    config.validate()
    autoencoder_url = autoencoder if isinstance(autoencoder, str) else autoencoder.info.get("url", "(in memory)")
    if isinstance(autoencoder, str):
        autoencoder = Autoencoder.load(autoencoder)
    built = build_prompt(config)
    target = load_target(config, built)
    bands = target.bands if target else None
    key = anchor_key(config, autoencoder, str(autoencoder_url), bands)
    found = cache.get(key) if cache else None
    anchors, source, encoded = found or (*find_anchors(config, built, autoencoder, bands), {})
    if cache and not found:
        cache.put(key, (anchors, source, encoded))
    head_kept = keeps_head(anchors, built, target)
    plan = Plan(config, autoencoder, built, anchors, target, head_kept, source=source, encoded=encoded)
    built.state_dict = {k: v.to("meta") for k, v in built.state_dict.items()}  # its values live on only as an anchor
    return plan, str(autoencoder_url)


def anchor_key(config: GenerateConfig, autoencoder: Autoencoder, url: str, bands: list[str] | None) -> tuple:
    """What a generation's fitted anchors depend on: the autoencoder, the prompt and its seed (its own weights are
    an anchor, or fill a classifier that does not fit), the anchor query at the collection's current version, and
    the target's bands (band mapping)."""
    from geosane.collection import Collection

    collection = collection_url(config, autoencoder) if config.anchors != "prompt" else None
    version = Collection(collection).version if collection and Collection(collection).exists() else None
    return (
        url,
        config.prompt,
        config.prompt_weights,
        config.seed,
        config.anchors,
        collection,
        version,
        tuple(bands or ()),
    )


def generate(
    autoencoder: Autoencoder | str,
    prompt: str,
    progress: bool = False,
    use_ray: bool | None = None,
    cache: AnchorCache | None = None,
    **settings: Any,
) -> list[Generated]:
    """Generate ``top_k`` task-ready models for ``prompt`` (settings: :class:`GenerateConfig`), best first.
    Candidates run as Ray tasks where a Ray cluster is there, unless ``use_ray`` is False.

    Every check (prompt, anchors, token sizes, the target's band count) runs before anything is generated.

    Args:
        autoencoder: a trained autoencoder, or where to load one.
        prompt: ``timm:NAME[?in_chans=C&num_classes=K]``.
        progress: show a progress bar over the candidates.
        use_ray: False: never as Ray tasks (inside a Tune trial).
        cache: anchors and latents kept from earlier generations (:class:`AnchorCache`), and kept for later ones.
        **settings: :class:`GenerateConfig` fields (``data``, ``anchors``, ``candidates``, ``seed``...).

    Returns:
        ``top_k`` ready models with their weights and cards, best first.

    Raises:
        GeoSANEError: a bad setting, prompt, anchor query or target data.
    """
    plan, autoencoder_url = prepare(autoencoder, prompt, cache, **settings)
    config, built = plan.config, plan.prompt
    if config.sampling != "joint" or len(plan.anchors) == 1:  # every candidate needs every anchor: encode them once
        for index in range(len(plan.anchors)):
            plan.latents(index)
    log.info(
        "%s: %d anchor(s), %d candidate(s), sampling %s",
        built.arch,
        len(plan.anchors),
        config.candidates,
        config.sampling,
    )
    lineages = {a.record.get("tags", {}).get("lineage") or a.record.get("id") or a.name for a in plan.anchors}
    if config.sampling != "joint" and len(lineages) > 1:
        log.warning(
            "%s sampling mixes %d anchors of %d lineages (or untagged models): units of independently trained models "
            "do not line up, and such mixes scored near chance on EuroSAT (README, 'How good it is'); use joint "
            "sampling, or anchors of one lineage",
            config.sampling,
            len(plan.anchors),
            len(lineages),
        )
    results, executor = run_candidates(plan, progress, use_ray)
    ranked = sorted(results, key=lambda r: -r[1].get("selection_score", 0.0)) if plan.target else results
    card = {
        **base_card(config, plan, autoencoder_url, plan.source),
        "generated_by": executor,
        "diversity": diversity(
            [(model.state_dict(), info) for model, info in results], built.head if not plan.head_kept else ()
        ),
    }
    del results  # the candidates past top_k go as soon as they are ranked
    out = []
    for rank, (model, info) in enumerate(ranked[: config.top_k], start=1):
        weights = {k: v.detach() for k, v in model.state_dict().items()}  # the model's own tensors, not a copy
        out.append(Generated(model, weights, {**card, "rank": rank, **candidate_card(info, plan)}))
    return out
