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

import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from geosane import storage
from geosane.autoencoder import Autoencoder, Latents, Scale
from geosane.errors import GeoSANEError
from geosane.tokenizer import detokenize, tokenize
from geosane.version import software_versions

__all__ = [
    "GenerateConfig",
    "Generated",
    "SAMPLINGS",
    "generate",
    "write_generated",
    "parse_query",
    "load_backbone",
    "reestimate_batchnorm",
    "sample_latents",
    "Prompt",
    "fit_to_prompt",
    "head_keys",
    "band_mapped_input",
    "adapt_input",
    "build_prompt",
    "backbone_weights",
]

log = logging.getLogger(__name__)

SAMPLINGS = ("joint", "token", "individual")
#: Record fields an anchor query may name beside free-form tags (``family=resnet,task=classification,dataset=...``).
QUERY_FIELDS = ("id", "name", "family", "task", "modality", "in_chans", "num_classes", "licence")
BATCHNORM_IMAGES = 512  # unlabeled target images that re-estimate BatchNorm statistics
SELECTION_IMAGES = 1000  # selection-split images that rank the candidates


@dataclass(frozen=True)
class GenerateConfig:
    """Everything a generation depends on; recorded in every model card."""

    prompt: str  # timm:NAME[?in_chans=C&num_classes=K]
    task: str = "classification"
    prompt_weights: str | None = None  # local weights for the prompt (a file GeoSANE reads safely)
    anchors: str = "prompt"  # "prompt", or a query over the collection: key=value[,key=value...]
    collection: str | None = None  # where query anchors come from (default: the autoencoder's training collection)
    sampling: str = "joint"
    bandwidth: float = 0.05  # kernel width, in units of each latent dimension's spread over the anchor's tokens
    candidates: int = 4
    top_k: int = 1
    data: str | None = None  # a registered dataset: BatchNorm re-estimation and ranking (never its test split)
    data_root: str | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise GeoSANEError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.candidates < 1 or not 1 <= self.top_k <= self.candidates:
            raise GeoSANEError(
                f"need candidates >= 1 and 1 <= top_k <= candidates, got {self.candidates}, {self.top_k}"
            )
        if self.bandwidth < 0:
            raise GeoSANEError(f"bandwidth must be >= 0, got {self.bandwidth}")


@dataclass
class Generated:
    """One generated model: the task-ready module, its weights (the prompt architecture's state dict) and its card."""

    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any]


@dataclass
class Prompt:
    """The prompt architecture as built: timm name, its options, the freshly built model and its state dict."""

    uri: str
    arch: str
    in_chans: int
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    head: tuple[str, ...]  # state-dict keys of the classifier
    sizes: dict[str, Any] = field(default_factory=dict)  # timm size arguments of a lightweight prompt (channels=...)


@dataclass
class Anchor:
    """A model in the prompt's shapes, and how it got there."""

    name: str
    state_dict: dict[str, torch.Tensor]
    fitted: str  # "as is", "cropped", "stem adapted", ...
    record: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ the prompt


def build_prompt(config: GenerateConfig) -> Prompt:
    """The prompt architecture from timm (seeded), with its local weights if given."""
    from geosane.sources import load_timm, parse_timm, timm_sizes

    if not config.prompt.startswith("timm:"):
        raise GeoSANEError(f"prompt {config.prompt!r}: expected timm:NAME[?in_chans=C&num_classes=K]")
    uri = config.prompt
    if config.prompt_weights:
        uri += ("&" if "?" in uri else "?") + f"pretrained={config.prompt_weights}"
    arch, options = parse_timm(uri)
    if "seed" not in options:
        uri += ("&" if "?" in uri else "?") + f"seed={config.seed}"
    source = load_timm(uri)
    return Prompt(
        uri=config.prompt,
        arch=arch,
        in_chans=source.in_chans or 3,
        num_classes=source.num_classes or 0,
        state_dict=source.state_dict,
        head=head_keys(arch, source.state_dict),
        sizes=timm_sizes(uri),
    )


def head_keys(arch: str, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The classifier's state-dict keys, as timm's pretrained config names the classifier module(s)."""
    import timm

    classifier = timm.models.get_pretrained_cfg(arch)
    names = (classifier.classifier if classifier else None) or "head"
    prefixes = (names,) if isinstance(names, str) else tuple(names)
    return tuple(k for k in state_dict if any(k.startswith(p + ".") for p in prefixes))


# ------------------------------------------------------------------------------ anchors


def parse_query(text: str) -> dict[str, str]:
    """``family=resnet,task=classification`` -> a dict; anything else is an error that shows the form."""
    query = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise GeoSANEError(f"anchor query {text!r}: expected key=value[,key=value...], got {part!r}")
        query[key.strip()] = value.strip()
    if not query:
        raise GeoSANEError(f"anchor query {text!r} is empty; use 'prompt' or key=value[,key=value...]")
    return query


def record_value(record: Any, key: str) -> str | None:
    value = getattr(record, key, None) if key in QUERY_FIELDS else record.tags.get(key)
    return None if value is None else str(value)


def select_records(collection: Any, query: dict[str, str]) -> list[Any]:
    """The collection's records that match every key of ``query``; none is an error that says what exists."""
    records = collection.records()
    chosen = [r for r in records if all(record_value(r, k) == v for k, v in query.items())]
    if not chosen:
        existing = {k: sorted({v for r in records if (v := record_value(r, k)) is not None}) for k in query}
        listing = "; ".join(f"{k}: {', '.join(v[:12]) or 'none'}" for k, v in existing.items())
        raise GeoSANEError(f"no model in {collection.url} matches {query} (values there: {listing})")
    return chosen


def fit_to_prompt(
    state_dict: dict[str, torch.Tensor],
    prompt: Prompt,
    in_chans: int | None,
    bands: tuple[list[str] | None, list[str] | None] = (None, None),
) -> tuple[dict[str, torch.Tensor], str]:
    """An anchor's weights in the prompt's shapes (see the module's docstring), or an error naming the first tensor
    that does not fit (key, prompt shape, anchor shape). The classifier is the anchor's where it has the prompt's
    shape, the prompt's otherwise (whether a decoded classifier is kept is decided later, :func:`keeps_head`)."""
    fitted, how = {}, set()
    for key, target in prompt.state_dict.items():
        if key in prompt.head:
            same = key in state_dict and state_dict[key].shape == target.shape
            fitted[key] = state_dict[key].to(target.dtype) if same else target
            continue
        if key not in state_dict:
            raise GeoSANEError(f"{key!r} of the prompt is not in the anchor")
        source = state_dict[key].to(target.dtype)
        if source.shape == target.shape:
            fitted[key] = source
            continue
        if source.dim() != target.dim():
            raise GeoSANEError(f"{key!r}: prompt shape {tuple(target.shape)}, anchor {tuple(source.shape)}")
        if (
            source.dim() == 4
            and in_chans is not None
            and source.shape[1] == in_chans
            and target.shape[1] == prompt.in_chans
            and source.shape[0] >= target.shape[0]
        ):  # the input convolution of another band count
            source = source[: target.shape[0]]
            mapped = band_mapped_input(source, bands[0], bands[1])
            if mapped is not None:
                source = mapped.to(target.dtype)
                how.add(f"input convolution mapped by band ({', '.join(bands[0] or [])})")
            else:
                source = adapt_input(source.float(), prompt.in_chans).to(target.dtype)
                how.add("input convolution adapted")
        elif all(s >= t for s, t in zip(source.shape, target.shape, strict=True)):
            source = source[tuple(slice(0, t) for t in target.shape)]
            how.add("cropped")
        else:
            raise GeoSANEError(f"{key!r}: prompt shape {tuple(target.shape)}, anchor {tuple(source.shape)}")
        fitted[key] = source.contiguous()
    if set(state_dict) - set(prompt.state_dict) - {k for k in state_dict if k.startswith(prompt.head)}:
        how.add("layers the prompt lacks dropped")
    return fitted, ", ".join(sorted(how)) or "as is"


def adapt_input(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An input convolution for ``in_chans`` bands from one trained on others, as timm adapts RGB stems: the filters
    repeated over the new bands in order and rescaled, or, for fewer bands, summed onto them, so that a constant
    image gives the same response. timm's ``adapt_input_conv`` assumes a 3-band source (it returns a 6-band stem
    unchanged for a 3-band target)."""
    from timm.models import adapt_input_conv

    bands = weight.shape[1]
    if bands == 3:
        return adapt_input_conv(in_chans, weight)
    if bands >= in_chans:  # fewer bands: source band s adds onto band s mod in_chans
        folded = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
        for band in range(bands):
            folded[:, band % in_chans] += weight[:, band]
        return folded
    return weight.repeat(1, -(-in_chans // bands), 1, 1)[:, :in_chans] * (bands / in_chans)


def band_mapped_input(
    weight: torch.Tensor, anchor_bands: list[str] | None, target_bands: list[str] | None
) -> torch.Tensor | None:
    """An input convolution for the target's bands from one trained on the anchor's, by band name: each of the anchor's
    filters goes to its band's channel, other bands start at zero, so the generated model first sees exactly what
    the anchor saw (EuroSAT RGB's B04, B03, B02 inside the 13 multispectral bands). None when a band is missing."""
    if not anchor_bands or not target_bands or not set(anchor_bands) <= set(target_bands):
        return None
    mapped = weight.new_zeros(weight.shape[0], len(target_bands), *weight.shape[2:])
    for channel, band in enumerate(anchor_bands):
        mapped[:, target_bands.index(band)] = weight[:, channel]
    return mapped


def backbone_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A task model's backbone under the names of the timm classifier (a segmentation or detection model of the zoo
    keeps its timm ``features_only`` backbone as ``backbone.``; the inverse of :func:`load_backbone`'s renaming);
    a classifier's weights as they are. Its head is left behind: a prompt gets its own."""
    prefix = "backbone."
    if not any(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {
        re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", k[len(prefix) :].removeprefix("model.")): v
        for k, v in state_dict.items()
        if k.startswith(prefix)
    }


def find_anchors(
    config: GenerateConfig, prompt: Prompt, autoencoder: Autoencoder, target_bands: list[str] | None = None
) -> tuple[list[Anchor], dict[str, Any] | None]:
    """The anchors (the prompt, or the query's collection models fitted to the prompt) and where they came from: the
    collection's URL and the version they were read at (later commits cannot change what that names)."""
    from geosane.collection import Collection

    if config.anchors == "prompt":
        return [Anchor(prompt.arch, prompt.state_dict, "the prompt itself")], None
    query = parse_query(config.anchors)
    url = config.collection or autoencoder.info.get("collection") or autoencoder.info.get("train", {}).get("collection")
    if not url:
        raise GeoSANEError("anchors from a query need a collection (--collection URL); the autoencoder names none")
    if not Collection(url).exists():
        raise GeoSANEError(f"no collection at {url}")
    collection = Collection(url, Collection(url).version)  # every read below sees one version
    autoencoder.check_collection(collection)
    anchors, misfits = [], []
    for record in select_records(collection, query):
        try:
            state_dict, how = fit_to_prompt(
                backbone_weights(collection.export(record)), prompt, record.in_chans, (record.bands, target_bands)
            )
        except GeoSANEError as exc:
            misfits.append(f"{record.name} ({record.id[:8]}): {exc}")
            continue
        summary = {k: getattr(record, k) for k in ("id", "name", "family", "task", "in_chans", "num_classes")}
        anchors.append(Anchor(record.name, state_dict, how, {**summary, "tags": record.tags}))
    if not anchors:
        raise GeoSANEError(
            f"none of the {len(misfits)} model(s) matching {query} fits the prompt {prompt.arch} "
            f"(in_chans={prompt.in_chans}): " + "; ".join(misfits[:3])
        )
    if misfits:
        log.warning("%d model(s) matching %s do not fit the prompt and are skipped", len(misfits), query)
    return anchors, {"url": url, "version": collection.pinned}


def keeps_head(anchors: list[Anchor], prompt: Prompt, data: str | None) -> bool:
    """Decode the classifier only when every anchor learned exactly the target's classes on the target dataset."""
    return bool(
        data
        and anchors[0].record
        and all(a.record.get("tags", {}).get("dataset") == data for a in anchors)
        and all(a.record.get("num_classes") == prompt.num_classes for a in anchors)
    )


# ------------------------------------------------------------------------------ sampling


def sample_latents(
    anchors: list[Latents], sampling: str, bandwidth: float, generator: torch.Generator
) -> tuple[Latents, int]:
    """One draw from the kernel density around the anchors' latents (see the module's docstring), and the anchor it
    is centred on (``joint``; the first anchor otherwise, whose layout and kept tensors it takes)."""
    stacked = torch.stack([a.values for a in anchors])  # [A, N, D]
    n_anchors, n, d = stacked.shape
    chosen = 0
    if sampling == "joint":
        chosen = int(torch.randint(n_anchors, (1,), generator=generator))
        center, scale = stacked[chosen], anchors[chosen].scale
    else:
        shape = (n, 1) if sampling == "token" else (n, d)
        pick = torch.randint(n_anchors, shape, generator=generator).expand(n, d)
        center = stacked.gather(0, pick.unsqueeze(0)).squeeze(0)
        scale = Scale(
            torch.stack([a.scale.mean for a in anchors]).mean(), torch.stack([a.scale.std for a in anchors]).mean()
        )
    spread = stacked.std(dim=1).mean(dim=0) if n > 1 else torch.ones(d)  # per latent dimension
    noise = torch.randn(n, d, generator=generator) * spread * bandwidth
    return replace(anchors[0], values=center + noise, scale=scale), chosen


# ------------------------------------------------------------------------------ task models and data


def load_backbone(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a timm classifier's weights into a task model's backbone (timm ``features_only``), which names some
    modules differently (``model.`` in front for ViTs, ``layers_0`` for ``layers.0`` in Swin). Every backbone tensor
    must be found: a missing one is an error, not a silently random layer."""
    own = module.state_dict()
    loaded, missing = {}, []
    for key in own:
        for candidate in (key, key.removeprefix("model."), re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", key)):
            if candidate in state_dict and state_dict[candidate].shape == own[key].shape:
                loaded[key] = state_dict[candidate]
                break
        else:
            missing.append(key)
    if missing:
        shapes = [f"{k} {tuple(own[k].shape)}" for k in missing[:3]]
        raise GeoSANEError(f"generated weights lack {len(missing)} backbone tensor(s) of these shapes: {shapes}")
    module.load_state_dict(loaded, strict=True)


def task_model(prompt: Prompt, task: str, num_classes: int) -> nn.Module:
    """A model for ``task`` on the prompt's backbone: timm's classifier, or the backbone under a new task head."""
    import timm

    from geosane.tasks import create_model

    if task == "classification":
        return timm.create_model(prompt.arch, in_chans=prompt.in_chans, num_classes=prompt.num_classes, **prompt.sizes)
    return create_model(prompt.arch, task, prompt.in_chans, num_classes, **prompt.sizes)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, images: torch.Tensor | list[torch.Tensor], batch: int = 64, seed: int = 0
) -> int:
    """BatchNorm running statistics from forward passes in *train* mode over unlabeled images (cumulative averages,
    no gradients, no parameter changes); returns the number of BatchNorm layers re-estimated.

    The images go in a seeded random order: datasets list samples class by class, and batches of one class would
    average within-class variances, far smaller than the data's (measured: EuroSAT models lost 5 points of accuracy).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    if isinstance(images, list):  # images of different sizes (detection), one at a time
        for index in order.tolist():
            model(images[index][None])
    else:
        shuffled = images[order]
        for first in range(0, len(shuffled), batch):
            model(shuffled[first : first + batch])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(norms)


@dataclass
class TargetData:
    """Unlabeled images for BatchNorm, and the labelled selection split that ranks candidates."""

    name: str
    unlabeled: torch.Tensor
    selection_x: torch.Tensor
    selection_y: Any
    num_classes: int
    bands: list[str]


def load_target(config: GenerateConfig, prompt: Prompt) -> TargetData | None:
    from geosane import datasets

    if not config.data:
        return None
    dataset = datasets.get(config.data, config.data_root)
    if dataset.in_chans != prompt.in_chans:
        raise GeoSANEError(
            f"dataset {config.data} has {dataset.in_chans} bands, the prompt {prompt.arch} takes in_chans="
            f"{prompt.in_chans}: set in_chans={dataset.in_chans} in the prompt"
        )
    if config.task != dataset.task:
        raise GeoSANEError(f"dataset {config.data} is a {dataset.task} dataset, the task is {config.task}")
    if config.task == "classification" and prompt.num_classes != dataset.num_classes:
        raise GeoSANEError(
            f"dataset {config.data} has {dataset.num_classes} classes, the prompt {prompt.arch} num_classes="
            f"{prompt.num_classes}: set num_classes={dataset.num_classes} in the prompt"
        )
    unlabeled = dataset.load("train", limit=BATCHNORM_IMAGES)
    selection = dataset.load("selection", limit=SELECTION_IMAGES)
    return TargetData(config.data, unlabeled.x, selection.x, selection.y, dataset.num_classes, list(dataset.bands))


RANKINGS = {
    True: "selection-split accuracy of the decoded classifier",
    False: "selection-split accuracy of a nearest-class-mean classifier on the features (new head)",
}


@torch.no_grad()
def selection_score(model: nn.Module, target: TargetData, head_kept: bool) -> float:
    """How a classification candidate ranks (``RANKINGS``): its accuracy on the selection split when its classifier
    was decoded; with a new head, a nearest-class-mean classifier on its features (half the split fits, half scores)."""
    from geosane.tasks import evaluate

    y = target.selection_y
    if head_kept:
        return evaluate(model, "classification", target.selection_x, y, target.num_classes)
    model.eval()
    forward: Any = model  # a timm classifier
    batches = target.selection_x.split(128)
    features = torch.cat([forward.forward_head(forward.forward_features(x), pre_logits=True) for x in batches])
    fit = torch.arange(len(y)) % 2 == 0
    means = torch.stack([features[fit & (y == c)].mean(0) for c in range(target.num_classes)])
    predicted = torch.cdist(features[~fit], means.nan_to_num()).argmin(1)
    return float((predicted == y[~fit]).float().mean())


# ------------------------------------------------------------------------------ candidates


@dataclass
class Plan:
    """What every candidate shares: the encoded anchors and the settings; shipped once to Ray tasks."""

    config: GenerateConfig
    autoencoder: Autoencoder
    prompt: Prompt
    anchors: list[Anchor]
    target: TargetData | None
    head_kept: bool
    encoded: dict[int, Latents] = field(default_factory=dict)

    def latents(self, index: int) -> Latents:
        """Anchor ``index`` in the latent space, encoded on first use: ``joint`` sampling encodes only the anchors
        its candidates are drawn around."""
        if index not in self.encoded:
            tokens = tokenize(self.anchors[index].state_dict, self.autoencoder.tokenizer)
            self.encoded[index] = self.autoencoder.encode(tokens)
        return self.encoded[index]

    @property
    def num_classes(self) -> int:
        return self.target.num_classes if self.target else self.prompt.num_classes


def make_candidate(plan: Plan, index: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Candidate ``index``: sample, decode, detokenize, build the task model, re-estimate BatchNorm and score.
    Seeded by the generation's seed and ``index`` alone, so a candidate is the same wherever it runs."""
    import timm

    config, prompt = plan.config, plan.prompt
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    if config.sampling == "joint":  # one anchor per candidate
        chosen = int(torch.randint(len(plan.anchors), (1,), generator=generator))
        latents, _ = sample_latents([plan.latents(chosen)], "joint", config.bandwidth, generator)
    else:
        everyone = [plan.latents(i) for i in range(len(plan.anchors))]
        latents, chosen = sample_latents(everyone, config.sampling, config.bandwidth, generator)
    tokens = tokenize(plan.anchors[chosen].state_dict, plan.autoencoder.tokenizer)  # its layout and kept tensors
    state_dict = detokenize(plan.autoencoder.decode(latents), tokens.layout, tokens.kept)
    if not plan.head_kept and prompt.head:
        torch.manual_seed(config.seed * 1_000_003 + index)
        fresh = timm.create_model(prompt.arch, in_chans=prompt.in_chans, num_classes=prompt.num_classes, **prompt.sizes)
        state_dict.update({k: v for k, v in fresh.state_dict().items() if k in prompt.head})
    model = task_model(prompt, config.task, plan.num_classes)
    if config.task == "classification":
        model.load_state_dict(state_dict, strict=True)
    else:
        load_backbone(model.backbone, state_dict)  # type: ignore[arg-type]
    info: dict[str, Any] = {
        "candidate": index,
        "anchor": plan.anchors[chosen].name if config.sampling == "joint" else None,
    }
    if plan.target is not None:
        # a new task head learns its own statistics in fine-tuning; the backbone's must fit the target's images now
        network = model if config.task == "classification" else model.backbone
        info["batchnorm_layers"] = reestimate_batchnorm(network, plan.target.unlabeled)  # type: ignore[arg-type]
        if config.task == "classification":
            info["selection_score"] = selection_score(model, plan.target, plan.head_kept)
    model.eval()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, info


def run_candidates(
    plan: Plan, progress: bool, use_ray: bool | None = None
) -> tuple[list[tuple[dict[str, torch.Tensor], dict[str, Any]]], str]:
    """All candidates: as Ray tasks when a Ray cluster is there (``ray.init`` done, or ``RAY_ADDRESS`` set) unless
    ``use_ray`` is False (inside a Tune trial, whose resources are the trial's), in this process otherwise; with a
    progress bar either way."""
    import os
    import sys

    from tqdm import tqdm

    bar = tqdm(total=plan.config.candidates, desc="candidates", unit="model", disable=not progress)
    results: dict[int, Any] = {}
    ray_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # never import Ray just to ask
    executor = "this process"
    if use_ray is not False and (ray_running or os.environ.get("RAY_ADDRESS")):
        import ray

        executor = "Ray tasks"
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        shared = ray.put(plan)
        task = ray.remote(num_cpus=1)(make_candidate)
        pending = {task.remote(shared, i): i for i in range(plan.config.candidates)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
            bar.update()
    else:
        for i in range(plan.config.candidates):
            results[i] = make_candidate(plan, i)
            bar.update()
    bar.close()
    return [results[i] for i in range(plan.config.candidates)], executor


# ------------------------------------------------------------------------------ the stage


def generate(
    autoencoder: Autoencoder | str, prompt: str, progress: bool = False, use_ray: bool | None = None, **settings: Any
) -> list[Generated]:
    """Generate ``top_k`` task-ready models for ``prompt`` (settings: :class:`GenerateConfig`), best first.
    Candidates run as Ray tasks where a Ray cluster is there, unless ``use_ray`` is False.

    Every check (prompt, anchors, token sizes, the target's band count) runs before anything is generated.
    """
    config = GenerateConfig(prompt=prompt, **settings)
    config.validate()
    autoencoder_url = autoencoder if isinstance(autoencoder, str) else autoencoder.info.get("url", "(in memory)")
    if isinstance(autoencoder, str):
        autoencoder = Autoencoder.load(autoencoder)
    built = build_prompt(config)
    target = load_target(config, built)
    anchors, source = find_anchors(config, built, autoencoder, target.bands if target else None)
    head_kept = keeps_head(anchors, built, config.data)
    plan = Plan(config, autoencoder, built, anchors, target, head_kept)
    if config.sampling != "joint" or len(anchors) == 1:  # every candidate needs every anchor: encode them once
        for index in range(len(anchors)):
            plan.latents(index)
    log.info(
        "%s: %d anchor(s), %d candidate(s), sampling %s", built.arch, len(anchors), config.candidates, config.sampling
    )
    results, executor = run_candidates(plan, progress, use_ray)
    ranked = sorted(results, key=lambda r: -r[1].get("selection_score", 0.0)) if target else results
    card = {**base_card(config, plan, str(autoencoder_url), source), "generated_by": executor}
    out = []
    for rank, (state_dict, info) in enumerate(ranked[: config.top_k], start=1):
        model = task_model(built, config.task, plan.num_classes)
        model.load_state_dict(state_dict, strict=True)
        out.append(Generated(model.eval(), state_dict, {**card, "rank": rank, **candidate_card(info, plan)}))
    return out


def base_card(
    config: GenerateConfig, plan: Plan, autoencoder_url: str, collection: dict[str, Any] | None
) -> dict[str, Any]:
    """What every generated model of one call shares in its card."""
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
            "trained_on": info.get("collection"),
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
    target = plan.target
    card: dict[str, Any] = {"candidate": info["candidate"], "anchor": info["anchor"]}
    if target is None:
        card["batchnorm"] = "not re-estimated: no target data (statistics are the anchor's)"
        card["selection"] = "not ranked: no target data"
        return card
    card["batchnorm"] = (
        f"re-estimated in train mode on {len(target.unlabeled)} unlabeled {target.name} train images "
        f"({info['batchnorm_layers']} layers)"
    )
    if "selection_score" in info:
        card["selection"] = {
            "score": info["selection_score"],
            "ranked_by": RANKINGS[plan.head_kept],
            "split": f"{target.name} selection ({len(target.selection_x)} samples)",
        }
    else:
        card["selection"] = f"not ranked: {plan.config.task} heads are new"
    return card


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
    and moved into place, the cards after the weights."""
    from safetensors.torch import save

    written = []
    for item in generated:
        stem = storage.join(out, f"model-{item.card['rank']}")
        storage.write_bytes(stem + ".safetensors", save(item.state_dict))
        storage.write_bytes(stem + ".json", json.dumps(item.card, indent=1).encode())
        storage.write_bytes(stem + ".md", card_markdown(item.card).encode())
        written.append(stem + ".safetensors")
    return written
