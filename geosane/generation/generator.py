"""The generation, step by step: :class:`Generator` and :func:`generate`.

``Generator(config, autoencoder)`` builds the prompt with timm (``prompt``), loads the target data (``target``), finds
the anchors and fits them to the prompt (``anchors``); every check runs there, before anything is generated. Then
each candidate is drawn by kernel density around the anchors' latents (``sampling``, ``search``), decoded straight
into a fresh task model (``candidates``), made ready (BatchNorm re-estimated on unlabeled target images) and scored
on the target's *selection* split (``ranking``); the best ``top_k`` come back as ready modules with their cards
(``cards``). This module is the only one that calls from one generation module into another: read it top to bottom
to follow a generation.

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

import datetime
import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cachetools
import torch
from torch import nn

from geosane.autoencoder import Autoencoder, Latents
from geosane.config import make
from geosane.generation import cards
from geosane.generation.anchors import Anchor, WeightsOnDisk, find_anchors, fit_to_prompt, keeps_head
from geosane.generation.candidates import Weights, decoder, into_model, seed_of
from geosane.generation.config import GenerateConfig, Generated
from geosane.generation.prompt import build_prompt
from geosane.generation.ranking import RANKINGS, diversity, make_ready, rank, ranking_of
from geosane.generation.sampling import KernelDraw, sample_latents
from geosane.generation.search import search_latents
from geosane.generation.target import load_target
from geosane.streaming import TokenReader
from geosane.tasks import backbone_weights, weight_distance
from geosane.version import software_versions

__all__ = ["AnchorCache", "FittedAnchors", "Generator", "generate"]

log = logging.getLogger(__name__)

Candidate = tuple[nn.Module, dict[str, Any]]


@dataclass
class FittedAnchors:
    """A generation's anchors fitted to its prompt, where they came from, and their latents as they are encoded."""

    anchors: list[Anchor]
    source: dict[str, Any] | None  # the collection's URL and version (None: the prompt itself)
    encoded: dict[int, Latents]


#: Fitted anchors kept across generations (a service keeps one; one thread uses it at a time): a request with the same
#: prompt, anchors, collection version, target bands and seed as an earlier one finds its anchors encoded already,
#: whatever its sampling, bandwidth or candidates. The least recently used go first.
AnchorCache = cachetools.LRUCache


class Generator:
    """One generation, built from its settings and an autoencoder, with every check done: the prompt, the target
    data, the anchors fitted to the prompt and the head rule. Its steps are methods, in the order a generation
    calls them: :meth:`encode`, :meth:`draw`, :meth:`candidate` (which calls :meth:`make_ready`), :meth:`candidates`
    and :meth:`generate`. The bench's baselines use the same methods.

    Args:
        config: the generation's settings.
        autoencoder: the trained autoencoder.
        collection: where query anchors come from (default: ``autoencoder.anchors``).
        data_root: where the target data lies (default: ``$GEOSANE_DATA``, then ``../shared/data``).
        cache: fitted, encoded anchors kept from earlier generations, and kept for later ones.

    Raises:
        GeoSANEError: a bad prompt, anchor query or target data.
    """

    def __init__(
        self,
        config: GenerateConfig,
        autoencoder: Autoencoder,
        collection: str | None = None,
        data_root: str | None = None,
        cache: AnchorCache | None = None,
    ) -> None:
        self.config, self.autoencoder = config, autoencoder
        self.autoencoder_url = str(autoencoder.info.get("url", "(in memory)"))
        self.prompt, own = build_prompt(config)
        self.target = load_target(config, self.prompt, data_root)
        self.collection = (collection or autoencoder.anchors) if config.anchors != "prompt" else None
        key = self.anchor_key()
        fitted = cache.get(key) if cache is not None else None
        self.cache_hit = fitted is not None
        if fitted is None:
            bands = self.target.bands if self.target else None
            found = find_anchors(config, self.prompt, own, self.collection, autoencoder, bands)
            fitted = FittedAnchors(*found, encoded={})
            if cache is not None:
                cache[key] = fitted
        self.anchors, self.source, self.encoded = fitted.anchors, fitted.source, fitted.encoded
        self.head_kept = keeps_head(self.anchors, self.prompt, self.target)

    def anchor_key(self) -> tuple:
        """What the fitted anchors depend on: the autoencoder, the prompt and its seed (its own weights are an
        anchor, or fill a classifier that does not fit), the anchor query at the collection's current version, and
        the target's bands (band mapping)."""
        from geosane.collection import Collection

        version = None
        if self.collection is not None and Collection(self.collection).exists():
            version = Collection(self.collection).version
        bands = tuple(self.target.bands) if self.target else ()
        config = self.config
        return (
            self.autoencoder_url,
            config.prompt,
            config.prompt_weights,
            config.seed,
            config.anchors,
            self.collection,
            version,
            bands,
        )

    @property
    def num_classes(self) -> int:
        """Classes of the task head: the target data's, else the prompt's."""
        return self.target.num_classes if self.target else self.prompt.num_classes

    @property
    def new_head(self) -> tuple[str, ...]:
        """The classifier's keys where every candidate gets a new (seeded) one; empty where it is decoded."""
        return () if self.head_kept else self.prompt.head

    def encode(self, index: int) -> Latents:
        """Anchor ``index`` in the latent space, encoded once and kept. Its weights move to a temporary file first
        (:class:`~geosane.generation.anchors.WeightsOnDisk`), so that neither encoding nor its candidates hold them
        in memory beside the latents and the model being decoded.

        Args:
            index: which anchor.

        Returns:
            Its latents.
        """
        if index not in self.encoded:
            anchor = self.anchors[index]
            if not isinstance(anchor.state_dict, WeightsOnDisk):  # from now on read a tensor at a time, as needed
                anchor.state_dict = WeightsOnDisk(anchor.state_dict)
            self.encoded[index] = self.autoencoder.encode(self.reader(index))
        return self.encoded[index]

    def fit(
        self, weights: Mapping[str, torch.Tensor], in_chans: int | None, bands: list[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], str]:
        """Other weights (a checkpoint the anchors started from, say) fitted to the prompt as an anchor is: cropped,
        the stem on the target's bands, the classifier where it fits (else left out).

        Args:
            weights: a timm classifier's weights.
            in_chans: the bands they take.
            bands: the bands they were trained on.

        Returns:
            The fitted weights, and how they were fitted.
        """
        target = self.target.bands if self.target else None
        return fit_to_prompt(dict(weights), self.prompt, None, in_chans, (bands, target))

    def reader(self, index: int) -> TokenReader:
        """Anchor ``index``'s tokens, read from its weights as they are needed (its layout and kept tensors)."""
        return TokenReader(self.anchors[index].state_dict, self.autoencoder.tokenizer)

    def draw(self, index: int) -> tuple[Latents | KernelDraw, int]:
        """Candidate ``index``'s latents, drawn around the anchors (``joint``: one anchor, chosen by the candidate's
        seed, encoded only then), and the anchor whose layout they take.

        Args:
            index: which candidate (with the generation's seed, it seeds the draw).

        Returns:
            The drawn latents and the anchor's index.
        """
        config = self.config
        generator = torch.Generator().manual_seed(seed_of(config.seed, index))
        if config.sampling == "joint":  # one anchor per candidate
            chosen = int(torch.randint(len(self.anchors), (1,), generator=generator))
            latents, _ = sample_latents([self.encode(chosen)], "joint", config.bandwidth, generator)
            return latents, chosen
        everyone = [self.encode(i) for i in range(len(self.anchors))]
        return sample_latents(everyone, config.sampling, config.bandwidth, generator)

    def candidate(self, index: int) -> Candidate:
        """Candidate ``index``: drawn, moved by the latent search where asked, decoded straight into a fresh task
        model and made ready (:meth:`make_ready`). Seeded by the generation's seed and ``index`` alone, so a
        candidate is the same wherever it runs.

        Args:
            index: which candidate.

        Returns:
            The task model and what its card says (anchor, BatchNorm layers, selection score, distance).
        """
        latents, chosen = self.draw(index)
        anchor, reader = self.anchors[chosen], self.reader(chosen)
        searched = None
        if self.config.search_steps:  # lightweight prompts: the whole draw in memory, and the decoder's activations
            whole = latents.latents() if isinstance(latents, KernelDraw) else latents
            latents, searched = search_latents(self, whole, reader, index)
        what = f"candidate {index} decoded from {anchor.name}"
        model, info = self.make_ready(decoder(self.autoencoder, latents, reader, what), index)
        distance = weight_distance(backbone_weights(model.state_dict()), anchor.state_dict, self.new_head)
        return model, {
            **info,
            **({"search": searched} if searched else {}),
            "anchor": anchor.name if self.config.sampling == "joint" else None,
            "distance": distance,
        }

    def make_ready(self, weights: Weights, index: int = 0) -> Candidate:
        """Weights in the prompt's shapes made task-ready, as every initialization from existing weights is: a task
        model seeded by ``index`` (its new head, where the head is not kept, is the candidate's), the weights put in,
        BatchNorm statistics re-estimated on unlabeled target images, and the selection-split score that ranks it.

        Args:
            weights: weights in the prompt's shapes (an anchor's, a soup...), or a function that writes them
                (:data:`~geosane.generation.candidates.Weights`).
            index: which candidate (seeds the new head).

        Returns:
            The task model in eval mode, and what its card says (candidate, BatchNorm layers, selection score).
        """
        seed = seed_of(self.config.seed, index)
        model = into_model(self.prompt, self.config.task, self.num_classes, weights, seed, self.new_head)
        info = {"candidate": index, **make_ready(model, self.target, self.config.task, self.head_kept)}
        return model.eval(), info

    def rebuilt(self, index: int) -> dict[str, torch.Tensor]:
        """Anchor ``index`` through the autoencoder without noise (encoded, decoded): what the latent space keeps."""
        from geosane.tokenizer import detokenize

        reader = self.reader(index)
        return detokenize(self.autoencoder.decode(self.encode(index)), reader.layout, reader.kept)

    def candidates(self, progress: bool = False, use_ray: bool | None = None) -> tuple[list[Candidate], str]:
        """Every candidate in index order: as Ray tasks when a Ray cluster is there (``ray.init`` done, or
        ``RAY_ADDRESS`` set) unless ``use_ray`` is False (inside a Tune trial, whose resources are the trial's), in
        this process otherwise; with a progress bar either way.

        Args:
            progress: show a progress bar.
            use_ray: False: never as Ray tasks.

        Returns:
            The candidates, and where they ran.
        """
        import os
        import sys

        from tqdm import tqdm

        count = self.config.candidates
        if self.config.sampling != "joint" or len(self.anchors) == 1:  # every candidate needs every anchor
            for index in range(len(self.anchors)):
                self.encode(index)
        bar = tqdm(total=count, desc="candidates", unit="model", disable=not progress)
        results: dict[int, Candidate] = {}
        ray_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # never import Ray just to ask
        executor = "this process"
        if use_ray is not False and (ray_running or os.environ.get("RAY_ADDRESS")):
            import ray

            executor = "Ray tasks"
            if not ray.is_initialized():
                ray.init(include_dashboard=False, log_to_driver=False)
            shared = ray.put(self)
            task = ray.remote(num_cpus=1)(Generator.candidate)
            pending = {task.remote(shared, i): i for i in range(count)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                results[pending.pop(done[0])] = ray.get(done[0])
                bar.update()
        else:
            for index in range(count):
                results[index] = self.candidate(index)
                bar.update()
        bar.close()
        return [results[i] for i in range(count)], executor

    def generate(self, progress: bool = False, use_ray: bool | None = None) -> list[Generated]:
        """The ``top_k`` best candidates as ready models with their cards, best first (by the selection score where
        there is target data, in index order otherwise).

        Args:
            progress: show a progress bar over the candidates.
            use_ray: False: never as Ray tasks (inside a Tune trial).

        Returns:
            The models, their weights and cards.
        """
        self.warn_of_mixed_lineages()
        results, executor = self.candidates(progress, use_ray)
        spread = diversity([(model.state_dict(), info) for model, info in results], self.new_head)
        kept = (rank(results) if self.target else results)[: self.config.top_k]
        results.clear()  # the candidates past top_k go now: nothing else holds them
        out = []
        for place, (model, info) in enumerate(kept, start=1):
            weights = {k: v.detach() for k, v in model.state_dict().items()}  # the model's own tensors, not a copy
            out.append(Generated(model, weights, self.card(place, info, executor, spread)))
        return out

    def warn_of_mixed_lineages(self) -> None:
        """Say when per-token or per-value sampling mixes anchors of independently trained models."""
        lineages = {a.record.get("tags", {}).get("lineage") or a.record.get("id") or a.name for a in self.anchors}
        log.info(
            "%s: %d anchor(s), %d candidate(s), sampling %s",
            self.prompt.arch,
            len(self.anchors),
            self.config.candidates,
            self.config.sampling,
        )
        if self.config.sampling != "joint" and len(lineages) > 1:
            log.warning(
                "%s sampling mixes %d anchors of %d lineages (or untagged models): units of independently trained "
                "models do not line up, and such mixes scored near chance on EuroSAT (README, 'How good it is'); use "
                "joint sampling, or anchors of one lineage",
                self.config.sampling,
                len(self.anchors),
                len(lineages),
            )

    def card(self, place: int, info: dict[str, Any], executor: str, spread: dict[str, Any]) -> cards.GeneratedCard:
        """The card of the candidate ranked ``place``: the generation's settings and sources, and the candidate's own
        notes (anchor, BatchNorm, selection, search).

        Args:
            place: its rank (1 is the best).
            info: the candidate's notes.
            executor: where the candidates ran.
            spread: how different the candidates are.

        Returns:
            The card.
        """
        config, prompt, target = self.config, self.prompt, self.target
        batchnorm = selection = search = None
        if target is not None:
            images = len(target.unlabeled)
            batchnorm = cards.BatchNormCard(layers=info["batchnorm_layers"], images=images, data=target.name)
            ranked_by = RANKINGS[ranking_of(config.task, self.head_kept)]
            split = f"{target.name} selection"
            count = len(target.selection_x)
            selection = cards.Selection(score=info["selection_score"], ranked_by=ranked_by, split=split, samples=count)
            if "search" in info:  # the latent search's labelled images and time (geosane.generation.search)
                search = cards.SearchCard(**info["search"], split=split)
        return cards.GeneratedCard(
            rank=place,
            candidate=info["candidate"],
            prompt=cards.PromptCard(
                uri=config.prompt,
                arch=prompt.arch,
                in_chans=prompt.in_chans,
                num_classes=prompt.num_classes,
                weights=config.prompt_weights,
            ),
            task=config.task,
            autoencoder=cards.AutoencoderOrigin(
                url=self.autoencoder_url,
                settings=asdict(self.autoencoder.config),
                step=self.autoencoder.info.get("step"),
                trained_on=self.autoencoder.collection,
            ),
            collection=cards.CollectionPin(**self.source) if self.source else None,
            anchors=[cards.AnchorCard(**{"name": a.name, "fitted": a.fitted, **a.record}) for a in self.anchors],
            anchor=info["anchor"],
            sampling=cards.Sampling(method=config.sampling, bandwidth=config.bandwidth, candidates=config.candidates),
            seed=config.seed,
            head="decoded from the anchors" if self.head_kept else "re-initialized (seeded)",
            data=config.data,
            generated_by=executor,
            distance_to_anchor=info.get("distance"),
            diversity=cards.Diversity(**spread),
            batchnorm=batchnorm,
            selection=selection,
            search=search,
            software=software_versions(),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )


def generate(
    autoencoder: Autoencoder | str,
    prompt: str,
    progress: bool = False,
    use_ray: bool | None = None,
    cache: AnchorCache | None = None,
    collection: str | None = None,
    data_root: str | None = None,
    **settings: Any,
) -> list[Generated]:
    """Generate ``top_k`` task-ready models for ``prompt`` (settings: :class:`GenerateConfig`), best first: a
    :class:`Generator` made and run. Candidates run as Ray tasks where a Ray cluster is there, unless ``use_ray`` is
    False. Every check (settings, prompt, anchors, token sizes, the target's band count) runs before anything is
    generated.

    Args:
        autoencoder: a trained autoencoder, or where to load one.
        prompt: ``timm:NAME[?in_chans=C&num_classes=K]``.
        progress: show a progress bar over the candidates.
        use_ray: False: never as Ray tasks (inside a Tune trial).
        cache: fitted, encoded anchors kept from earlier generations (:data:`AnchorCache`), and kept for later ones.
        collection: where query anchors come from (default: the autoencoder's).
        data_root: where the target data lies.
        **settings: :class:`GenerateConfig` fields (``data``, ``anchors``, ``candidates``, ``seed``...).

    Returns:
        ``top_k`` ready models with their weights and cards, best first.

    Raises:
        GeoSANEError: a bad setting, prompt, anchor query or target data.
    """
    config = make(GenerateConfig, prompt=prompt, **settings)
    if isinstance(autoencoder, str):
        url, autoencoder = autoencoder, Autoencoder.load(autoencoder)
        autoencoder.info.setdefault("url", url)
    generator = Generator(config, autoencoder, collection, data_root, cache)
    return generator.generate(progress, use_ray)
