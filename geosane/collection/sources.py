"""Where models come from: files, directories and fsspec URLs, timm architectures, the real pretrained catalogue.

A source string names one or more models. :func:`find` resolves source strings to :class:`Found` models without
reading them (so a typo fails the whole command at once), and each ``Found.read()`` returns a
:class:`ModelSource`: a flat state dict plus what we know about the model. Schemes are a small registry,
:data:`SCHEMES`: a prefix and one function from a source string to the models it names. Anything without a
registered prefix is a file, a directory or an fsspec URL.

Nothing here executes code from a file: ``geosane.collection.formats`` reads each file format's tensors only.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from geosane import storage
from geosane.collection import pretrained
from geosane.collection.formats import SUFFIXES, bundle_name, channels_last, guess_in_chans, read_model_file
from geosane.config import check_seed
from geosane.errors import GeoSANEError
from geosane.spec import Spec, int_or_ints, parse_spec

__all__ = [
    "TIMM_SIZE_OPTIONS",
    "ModelSource",
    "content_sha256",
    "find",
    "load",
    "load_timm",
    "parse_timm",
    "timm_family",
    "timm_sizes",
]

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
#: Architecture-size arguments a timm URI may pass to timm (integers, or comma-separated integers for tuples), so
#: lightweight prompts are expressible: ``timm:test_resnet?channels=16,24,24,48``; ``img_size`` builds a ViT or
#: CoAtNet for the data's input size (``timm:test_vit?img_size=64``).
TIMM_SIZE_OPTIONS = ("channels", "layers", "embed_dim", "depth", "num_heads", "dims", "depths", "img_size")
#: What a timm URI may say, and the type of each value.
TIMM_OPTIONS: dict[str, Callable[[str], Any]] = {
    "in_chans": int,
    "num_classes": int,
    "pretrained": str,
    "seed": int,
    **dict.fromkeys(TIMM_SIZE_OPTIONS, int_or_ints),
}


@dataclass
class ModelSource:
    """One model's weights and metadata, as read from its source."""

    name: str
    uri: str
    sha256: str
    state_dict: dict[str, torch.Tensor]
    family: str = "unknown"
    task: str = "unknown"
    in_chans: int | None = None
    num_classes: int | None = None
    licence: str = "unknown"
    modality: str = "unknown"
    bands: list[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Found:
    """A model that a source names, found but not read yet."""

    uri: str
    name: str
    read: Callable[[], ModelSource]


def find(uris: list[str]) -> list[Found]:
    """Every model the source strings name, in order and each once; everything is resolved before anything is read."""
    found: dict[str, Found] = {}
    for uri in uris:
        scheme = next((f for prefix, f in SCHEMES.items() if uri.startswith(prefix)), find_files)
        found.update((model.uri, model) for model in scheme(uri))
    return list(found.values())


def load(uri: str) -> ModelSource:
    """Read the one model that ``uri`` names (a file, a ``timm:`` name, a ``pretrained:GROUP#MODEL`` entry)."""
    models = find([uri])
    if len(models) != 1:
        raise GeoSANEError(f"{uri}: names {len(models)} models, expected one; use geosane.collection.sources.find")
    return models[0].read()


# ------------------------------------------------------------------------------ files, directories, URLs


def find_files(uri: str) -> list[Found]:
    """A model file, or every model file under a directory (recursively, sorted), named by its path inside the
    directory (``galileo_nano/encoder``); local paths and fsspec URLs alike."""
    with storage.errors_named(uri, "read"):
        fs, path = storage.filesystem(uri)
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.endswith(SUFFIXES))
            if not files:
                raise GeoSANEError(f"{uri}: directory holds no model files ({', '.join(SUFFIXES)})")
            named = {
                (fs.unstrip_protocol(f) if "://" in uri else posixpath.normpath(f)): name_inside(f, path) for f in files
            }
        elif not fs.exists(path):
            raise GeoSANEError(f"{uri}: no such file or directory")
        elif not path.endswith(SUFFIXES):
            raise GeoSANEError(f"{uri}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
        else:
            named = {uri: posixpath.splitext(posixpath.basename(path))[0]}
    return [Found(file, name, functools.partial(read_file, file, name)) for file, name in named.items()]


def name_inside(file: str, folder: str) -> str:
    """A model's name from its path inside a directory (``galileo_nano/encoder``; a SavedModel's folder)."""
    relative = posixpath.relpath(file, folder.rstrip("/"))
    if relative.endswith("variables/variables.index"):
        return posixpath.dirname(posixpath.dirname(relative)) or bundle_name(file)
    return posixpath.splitext(relative)[0]


def read_file(uri: str, name: str | None = None) -> ModelSource:
    """One model file (for a TensorFlow bundle, its ``.index``); ``name`` defaults to the file's stem."""
    path = uri.split("::")[0]  # a chained URL (zip://member::archive) names its file first
    digest, state_dict = read_model_file(uri)
    name = name or default_name(path)
    in_chans = guess_in_chans(state_dict, channels_last(uri))
    source = ModelSource(name=name, uri=uri, sha256=digest, state_dict=state_dict, in_chans=in_chans)
    if channels_last(uri):
        source.tags["kernel_layout"] = "kh,kw,in,out"  # Keras/TensorFlow's, kept as stored
    return source


def default_name(path: str) -> str:
    """A file's stem; a SavedModel's folder for its ``variables/variables.index``."""
    if path.endswith(".index"):
        return bundle_name(path)
    return posixpath.splitext(posixpath.basename(path.rstrip("/")))[0]


# ------------------------------------------------------------------------------ timm:


def find_timm(uri: str) -> list[Found]:
    """``timm:NAME?...``: one architecture, built when read."""
    return [Found(uri, parse_timm(uri).name, functools.partial(load_timm, uri))]


def parse_timm(uri: str) -> Spec:
    """``timm:resnet18?in_chans=13&num_classes=10&pretrained=/path/w.safetensors&seed=0``, typed."""
    return parse_spec(uri, "timm", TIMM_OPTIONS)


def timm_sizes(spec: Spec) -> dict[str, Any]:
    """The architecture-size arguments of a timm URI (:data:`TIMM_SIZE_OPTIONS`), as timm takes them."""
    return {key: spec.typed[key] for key in TIMM_SIZE_OPTIONS if key in spec.typed}


def load_timm(uri: str) -> ModelSource:
    """Build a timm architecture (random init, seeded), optionally with local pretrained weights."""
    import timm

    spec = parse_timm(uri)
    name, options = spec.name, spec.typed
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GeoSANEError(f"{uri}: unknown timm model {name!r}{hint}")
    in_chans, num_classes, seed = options.get("in_chans", 3), options.get("num_classes", 1000), options.get("seed", 0)
    check_seed(seed, f"{uri}: seed")
    if in_chans < 1 or num_classes < 0:
        raise GeoSANEError(
            f"{uri}: in_chans must be >= 1 and num_classes >= 0 (got in_chans={in_chans}, num_classes={num_classes})"
        )
    sizes = timm_sizes(spec)
    torch.manual_seed(seed)
    sha256 = ""
    overlay = None
    if options.get("pretrained"):
        weights = load(options["pretrained"])  # a file, or a catalogued pretrained:NAME
        overlay = pretrained_overlay(name, weights.state_dict)
        sha256 = weights.sha256
    try:
        model = timm.create_model(
            name,
            pretrained=overlay is not None,
            pretrained_cfg_overlay=overlay,
            in_chans=in_chans,
            num_classes=num_classes,
            **sizes,
        )
    except TypeError as exc:
        raise GeoSANEError(f"{uri}: {name} does not take {', '.join(sizes)} ({exc})") from None
    except RuntimeError as exc:
        if overlay is None:
            raise
        raise GeoSANEError(
            f"{uri}: pretrained file {options['pretrained']} does not fit {name} "
            f"(in_chans={in_chans}, num_classes={num_classes}): {str(exc).splitlines()[0]}"
        ) from exc
    state_dict = {k: v.detach() for k, v in model.state_dict().items()}  # the model's own tensors: no second copy
    if options.get("pretrained"):
        check_fit(uri, name, state_dict, weights.state_dict)
    return ModelSource(
        name=name,
        uri=uri,
        sha256=sha256 or content_sha256(state_dict),
        state_dict=state_dict,
        family=timm_family(name),
        task="classification" if num_classes > 0 else "features",
        in_chans=in_chans,
        num_classes=num_classes,
    )


def pretrained_overlay(name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A timm pretrained config that loads ``state_dict`` directly (never a hub), so that timm itself adapts
    the stem to ``in_chans`` and drops a classifier whose class count differs, as it does for its own weights."""
    cfg = timm_config(name)
    overlay: dict[str, Any] = {"source": "timm", "state_dict": dict(state_dict)}
    stems = (cfg.first_conv,) if isinstance(cfg.first_conv, str) else tuple(cfg.first_conv or ())
    stem = next((state_dict[f"{s}.weight"] for s in stems if f"{s}.weight" in state_dict), None)
    if stem is not None and stem.dim() == 4:
        overlay["input_size"] = (int(stem.shape[1]), *cfg.input_size[1:])
    heads = (cfg.classifier,) if isinstance(cfg.classifier, str) else tuple(cfg.classifier or ())
    head = next((state_dict[f"{h}.weight"] for h in heads if f"{h}.weight" in state_dict), None)
    overlay["num_classes"] = int(head.shape[0]) if head is not None else 0
    return overlay


def timm_config(name: str) -> Any:
    """timm's pretrained config of an architecture (its stem, head and input size)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise GeoSANEError(f"timm has no pretrained config for {name!r}: cannot load local weights into it")
    return cfg


def check_fit(uri: str, name: str, built: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    """timm loads non-strictly when it drops a head; make sure everything but the head came from the file."""
    classifier = timm_config(name).classifier or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [k for k in built if k not in loaded and not k.startswith(tuple(f"{h}." for h in heads))]
    unexpected = [k for k in loaded if k not in built]
    if missing or unexpected:
        raise GeoSANEError(
            f"{uri}: pretrained file does not fit {name}: {len(missing)} tensor(s) missing from the file "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def timm_family(name: str) -> str:
    """timm's module for an architecture (``resnet``, ``vision_transformer``, ``swin_transformer``...)."""
    from timm.models import get_arch_name
    from timm.models._registry import _model_to_module

    return _model_to_module.get(get_arch_name(name), "unknown")


# ------------------------------------------------------------------------------ pretrained:


def by_position(uri: str, state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """A file's tensors under the names of timm's ``arch``, matched by position: the same count, and each tensor of
    the shape timm's has at that position (a file of another architecture fails here, naming the first mismatch).

    Args:
        uri: the model, for messages.
        state_dict: the file's tensors, in the file's order.
        arch: the timm architecture.

    Returns:
        The same tensors under timm's names.

    Raises:
        GeoSANEError: a different count, or a shape that differs.
    """
    import timm

    with torch.device("meta"):
        names = timm.create_model(arch, pretrained=False).state_dict()
    if len(names) != len(state_dict):
        raise GeoSANEError(f"{uri}: holds {len(state_dict)} tensors, timm's {arch} has {len(names)}")
    for (theirs, tensor), (ours, expected) in zip(state_dict.items(), names.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise GeoSANEError(
                f"{uri}: tensor {theirs} has shape {tuple(tensor.shape)}, timm's {arch} has {ours} of shape "
                f"{tuple(expected.shape)} at that position"
            )
    return dict(zip(names, state_dict.values(), strict=True))


def find_pretrained(uri: str) -> list[Found]:
    """``pretrained:all`` or ``pretrained:GROUP``: the catalogued real models, read with the catalogue's metadata."""
    return [
        Found(model, name, functools.partial(read_pretrained, model, name))
        for model, name in pretrained.expand(uri).items()
    ]


def read_pretrained(uri: str, name: str) -> ModelSource:
    """A catalogued model with the catalogue's metadata (under timm's names where the entry maps onto timm)."""
    entry = pretrained.entry(uri)
    source = read_file(pretrained.location(uri), name)
    if entry.timm:
        source.state_dict = by_position(uri, source.state_dict, entry.timm)
        source.in_chans = guess_in_chans(source.state_dict, False)
    source.family, source.task, source.modality = entry.family, entry.task, entry.modality
    source.bands = entry.bands[: source.in_chans] if source.in_chans else list(entry.bands)
    source.licence, source.num_classes = entry.licence, entry.num_classes
    source.tags = {**source.tags, **entry.tags, "catalogue": uri[len(pretrained.PREFIX) :].partition("#")[0]}
    if entry.wheel:
        source.tags["wheel"] = entry.wheel
    return source


#: Source schemes by prefix: one function from a source string to the models it names. A string without a
#: registered prefix is a file, a directory or an fsspec URL (``find_files``).
SCHEMES: dict[str, Callable[[str], list[Found]]] = {
    TIMM_PREFIX: find_timm,
    pretrained.PREFIX: find_pretrained,
}


def content_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A hash of names, dtypes, shapes and raw bytes: equal exactly when the tensors are equal bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()
