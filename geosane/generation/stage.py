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
from typing import Any

from geosane.autoencoder import Autoencoder
from geosane.generation.anchors import find_anchors, keeps_head
from geosane.generation.candidates import Plan, run_candidates
from geosane.generation.cards import base_card, candidate_card, diversity
from geosane.generation.config import GenerateConfig, Generated
from geosane.generation.prompt import build_prompt, task_model
from geosane.generation.ranking import load_target

__all__ = ["generate", "prepare"]

log = logging.getLogger(__name__)


def prepare(autoencoder: Autoencoder | str, prompt: str, **settings: Any) -> tuple[Plan, str]:
    """Everything a generation's candidates share, checked before anything is generated: the prompt, the target
    data, the anchors fitted to the prompt, and the head rule (the bench's anchor-based baselines start here too).

    Args:
        autoencoder: a trained autoencoder, or where to load one.
        prompt: ``timm:NAME[?in_chans=C&num_classes=K]``.
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
    anchors, source = find_anchors(config, built, autoencoder, target.bands if target else None)
    plan = Plan(config, autoencoder, built, anchors, target, keeps_head(anchors, built, target), source=source)
    return plan, str(autoencoder_url)


def generate(
    autoencoder: Autoencoder | str, prompt: str, progress: bool = False, use_ray: bool | None = None, **settings: Any
) -> list[Generated]:
    """Generate ``top_k`` task-ready models for ``prompt`` (settings: :class:`GenerateConfig`), best first.
    Candidates run as Ray tasks where a Ray cluster is there, unless ``use_ray`` is False.

    Every check (prompt, anchors, token sizes, the target's band count) runs before anything is generated.

    Args:
        autoencoder: a trained autoencoder, or where to load one.
        prompt: ``timm:NAME[?in_chans=C&num_classes=K]``.
        progress: show a progress bar over the candidates.
        use_ray: False: never as Ray tasks (inside a Tune trial).
        **settings: :class:`GenerateConfig` fields (``data``, ``anchors``, ``candidates``, ``seed``...).

    Returns:
        ``top_k`` ready models with their weights and cards, best first.

    Raises:
        GeoSANEError: a bad setting, prompt, anchor query or target data.
    """
    plan, autoencoder_url = prepare(autoencoder, prompt, **settings)
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
    results, executor = run_candidates(plan, progress, use_ray)
    ranked = sorted(results, key=lambda r: -r[1].get("selection_score", 0.0)) if plan.target else results
    card = {
        **base_card(config, plan, autoencoder_url, plan.source),
        "generated_by": executor,
        "diversity": diversity(results, built.head if not plan.head_kept else ()),
    }
    out = []
    for rank, (state_dict, info) in enumerate(ranked[: config.top_k], start=1):
        model = task_model(built, config.task, plan.num_classes)
        model.load_state_dict(state_dict, strict=True)
        out.append(Generated(model.eval(), state_dict, {**card, "rank": rank, **candidate_card(info, plan)}))
    return out
