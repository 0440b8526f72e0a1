"""Anchors: the models generation samples around (the prompt itself, or collection models a query selects), fitted
to the prompt's shapes: cropped for lighter prompts, their input convolution mapped by band name or adapted for
another band count, the classifier kept only where every anchor learned the target's classes."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from geosane.autoencoder import Autoencoder
from geosane.errors import GeoSANEError
from geosane.generation.config import GenerateConfig
from geosane.generation.prompt import Prompt
from geosane.generation.target import TargetData
from geosane.tasks import adapt_input, band_mapped_input

__all__ = [
    "Anchor",
    "WeightsOnDisk",
    "find_anchors",
    "fit_to_prompt",
    "keeps_head",
    "parse_query",
]

log = logging.getLogger(__name__)

#: Record fields an anchor query may name beside free-form tags (``family=resnet,task=classification,dataset=...``).
QUERY_FIELDS = ("id", "name", "family", "task", "modality", "in_chans", "num_classes", "licence")


@dataclass
class Anchor:
    """A model in the prompt's shapes, and how it got there."""

    name: str
    state_dict: Mapping[str, torch.Tensor]  # in memory, or on disk once encoded (:class:`WeightsOnDisk`)
    fitted: str  # "as is", "cropped", "stem adapted", ...
    record: dict[str, Any] = field(default_factory=dict)


class WeightsOnDisk(Mapping[str, torch.Tensor]):
    """An anchor's weights once it is encoded: in a temporary safetensors file, read a tensor at a time (memory-mapped).
    Its candidates need them only for the tensors that are not tokenized and for their distance to it, so a large
    anchor need not stay in memory beside the model being decoded. Shipped to another process (a Ray task), it is a
    plain dict again."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.folder = tempfile.TemporaryDirectory(prefix="geosane-anchor-")  # removed with this object
        self.path = Path(self.folder.name) / "weights.safetensors"
        seen: set[int] = set()
        tensors = {}
        for key, value in state_dict.items():  # a file holds each tensor once: tied tensors are copied apart
            pointer = value.untyped_storage().data_ptr()
            tensors[key] = value.contiguous() if pointer not in seen and value.is_contiguous() else value.clone()
            seen.add(pointer)
        save_file(tensors, str(self.path))
        self.names = dict.fromkeys(state_dict)  # in order

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self.names:
            raise KeyError(key)
        with safe_open(str(self.path), framework="pt") as weights:
            return weights.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self.items()),)


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


def matches(record: Any, key: str, value: str) -> bool:
    """Whether a record's ``key`` is ``value``; a dataset named without options (``dataset=eurosat_rgb``) matches
    every variant of it (``eurosat_rgb?classes=0-4``), since options only say which part of the data was used."""
    found = record_value(record, key)
    if key == "dataset" and "?" not in value and found is not None:
        found = found.partition("?")[0]
    return found == value


def select_records(collection: Any, query: dict[str, str]) -> list[Any]:
    """The collection's records that match every key of ``query``; none is an error that says what exists."""
    records = collection.records()
    chosen = [r for r in records if all(matches(r, k, v) for k, v in query.items())]
    if not chosen:
        existing = {k: sorted({v for r in records if (v := record_value(r, k)) is not None}) for k in query}
        listing = "; ".join(f"{k}: {', '.join(v[:12]) or 'none'}" for k, v in existing.items())
        raise GeoSANEError(f"no model in {collection.url} matches {query} (values there: {listing})")
    return chosen


def fit_to_prompt(
    state_dict: dict[str, torch.Tensor],
    prompt: Prompt,
    own: Mapping[str, torch.Tensor] | None,
    in_chans: int | None,
    bands: tuple[list[str] | None, list[str] | None] = (None, None),
) -> tuple[dict[str, torch.Tensor], str]:
    """An anchor's weights in the prompt's shapes (see the module's docstring), or an error naming the first tensor
    that does not fit (key, prompt shape, anchor shape). The classifier is the anchor's where it has the prompt's
    shape, the prompt's own otherwise (whether a decoded classifier is kept is decided later, :func:`keeps_head`).

    Args:
        state_dict: the anchor's weights.
        prompt: the built prompt.
        own: the prompt's own weights (its classifier fills one that does not fit; None: left out).
        in_chans: the bands the anchor takes.
        bands: the anchor's and the target's band names.

    Returns:
        The fitted weights and how they were fitted (``as is``, ``cropped``, ...).

    Raises:
        GeoSANEError: a tensor that fits in no way (key, prompt shape, anchor shape).
    """
    fitted, how = {}, set()
    for key, target in prompt.shapes.items():
        if key in prompt.head:
            same = key in state_dict and state_dict[key].shape == target.shape
            if same or own is not None:  # without the prompt's own weights, a classifier that does not fit is left out
                fitted[key] = state_dict[key].to(target.dtype) if same else own[key]  # type: ignore[index]
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
    if set(state_dict) - set(prompt.shapes) - {k for k in state_dict if k.startswith(prompt.head)}:
        how.add("layers the prompt lacks dropped")
    return fitted, ", ".join(sorted(how)) or "as is"


def find_anchors(
    config: GenerateConfig,
    prompt: Prompt,
    own: dict[str, torch.Tensor],
    collection: str | None,
    autoencoder: Autoencoder,
    target_bands: list[str] | None = None,
) -> tuple[list[Anchor], dict[str, Any] | None]:
    """The anchors (the prompt, or the query's collection models fitted to the prompt) and where they came from: the
    collection's URL and the version they were read at (later commits cannot change what that names).

    Args:
        config: the generation's settings (its ``anchors``: ``prompt`` or a query).
        prompt: the built prompt.
        own: the prompt's own weights.
        collection: where query anchors come from.
        autoencoder: the autoencoder (whose token language the collection must speak).
        target_bands: the target data's bands, for band mapping.

    Returns:
        The anchors, and the collection URL and version (None for ``prompt``).

    Raises:
        GeoSANEError: no collection, no match, or no match that fits the prompt (with the first misfit named).
    """
    from geosane.collection import Collection
    from geosane.tasks import backbone_weights

    if config.anchors == "prompt":
        weights, how = prompt_on_bands(config, prompt, own, target_bands)
        return [Anchor(prompt.arch, weights, how)], None
    query = parse_query(config.anchors)
    if not collection:
        raise GeoSANEError("anchors from a query need a collection (--collection URL); the autoencoder names none")
    if not Collection(collection).exists():
        raise GeoSANEError(f"no collection at {collection}")
    pinned = Collection(collection, Collection(collection).version)  # every read below sees one version
    autoencoder.check_collection(pinned)
    anchors, misfits = [], []
    for record in select_records(pinned, query):
        try:
            state_dict, how = fit_to_prompt(
                backbone_weights(pinned.export(record)), prompt, own, record.in_chans, (record.bands, target_bands)
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
    return anchors, {"url": collection, "version": pinned.pinned}


def prompt_on_bands(
    config: GenerateConfig, prompt: Prompt, own: dict[str, torch.Tensor], target_bands: list[str] | None
) -> tuple[dict[str, torch.Tensor], str]:
    """The prompt's own weights as an anchor: where its prompt weights were trained on other bands that the target
    names (ImageNet's red, green and blue among Sentinel-2's 13), their input convolution goes to those bands by name,
    the others at zero, instead of timm's cyclic adaptation.

    Args:
        config: the generation's settings (``prompt_weights``).
        prompt: the built prompt.
        own: its own weights (timm adapted a pretrained stem to the prompt's bands).
        target_bands: the target data's bands.

    Returns:
        The weights, and how they were fitted.
    """
    from geosane.collection.sources import load
    from geosane.tasks import SAME_BANDS

    if not config.prompt_weights or not target_bands:
        return own, "the prompt itself"
    source = load(config.prompt_weights)
    stem = next((k for k, v in own.items() if v.dim() == 4 and v.shape[1] == prompt.in_chans), "")
    trained = source.state_dict.get(stem)
    if trained is None or trained.dim() != 4 or trained.shape[1] == prompt.in_chans or not source.bands:
        return own, "the prompt itself"
    names = [[SAME_BANDS.get(b, b) for b in bands] for bands in (source.bands, target_bands)]
    mapped = band_mapped_input(trained, names[0], names[1])
    if mapped is None:
        return own, "the prompt itself"
    fitted = f"the prompt itself, input convolution mapped by band ({', '.join(source.bands)})"
    return {**own, stem: mapped.to(own[stem].dtype)}, fitted


def keeps_head(anchors: list[Anchor], prompt: Prompt, target: TargetData | None) -> bool:
    """Keep the anchors' classifier only when every anchor learned exactly the target's classes (by name, in order):
    the one head rule of every initialization from existing weights (a model of the same classes on another sensor
    keeps its head; a model of other classes gets a new one).

    Args:
        anchors: the anchors.
        prompt: the built prompt.
        target: the target data (its class names); without it no head is kept.

    Returns:
        Whether the anchors' classifier is kept.
    """
    if target is None or not anchors[0].record or prompt.num_classes != target.num_classes:
        return False
    return all(anchor_classes(a, target.root) == target.classes for a in anchors)


def anchor_classes(anchor: Anchor, data_root: str | None) -> list[str] | None:
    """The class names an anchor learned: its dataset's, where its record names a dataset GeoSANE knows."""
    from geosane import datasets

    spec = anchor.record.get("tags", {}).get("dataset")
    if not spec:
        return None
    try:
        return list(datasets.get(spec, data_root).classes)
    except GeoSANEError:
        return None
