"""Every registry is one :class:`~geosane.registry.Registry`, and every entry of every registry is what its
registry promises (timm's way: tests parametrized over the registries' entries)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from geosane import datasets
from geosane.autoencoder import SIZES, AutoencoderConfig
from geosane.autoencoder import registry as shipped
from geosane.bench import INITIALIZATIONS, SPECIALISTS
from geosane.bench.ablations import BASELINES
from geosane.collection.pretrained import CATALOGUE
from geosane.errors import GeoSANEError
from geosane.generation import RANKINGS
from geosane.generation.ranking import ranking_of
from geosane.registry import Registry
from geosane.tasks import TASKS, metric_name

REGISTRIES: dict[str, Registry[Any]] = {
    "datasets": datasets.REGISTRY,
    "initializations": INITIALIZATIONS,
    "specialists": SPECIALISTS,
    "baselines": BASELINES,
    "rankings": RANKINGS,
    "tasks": TASKS,
    "sizes": SIZES,
    "pretrained": CATALOGUE,
    "shipped autoencoders": shipped.AUTOENCODERS,
}
ENTRIES = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry]


def test_every_registry_is_one_kind_and_names_what_it_knows() -> None:
    for kind, registry in REGISTRIES.items():
        assert isinstance(registry, Registry) and len(registry) > 0, kind
        with pytest.raises(GeoSANEError, match=rf"unknown {registry.what} 'nope'.*known: {list(registry)[0]}"):
            registry["nope"]
        with pytest.raises(GeoSANEError, match="registered twice"):
            registry.add(next(iter(registry)), None)


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_every_entry_is_what_its_registry_promises(kind: str, name: str) -> None:
    entry = REGISTRIES[kind][name]
    if kind == "datasets":  # a dataset class of that name, for a known task, taking options by keyword
        assert entry.name == name and entry.task in TASKS
        assert "root" in inspect.signature(entry.__init__).parameters
    elif kind in ("initializations", "specialists"):  # a documented builder of a trial's model
        assert callable(entry) and entry.__doc__ and list(inspect.signature(entry).parameters) == ["context"]
    elif kind == "baselines":  # built from the trial's generator, and an initialization of the same name
        assert list(inspect.signature(entry).parameters) == ["generator"] and name in INITIALIZATIONS
    elif kind == "rankings":  # a description, reachable from a task model
        reachable = {ranking_of(t, kept) for t in ("classification", "segmentation", "detection") for kept in (0, 1)}
        assert name in reachable and entry.startswith("selection-split")
    elif kind == "tasks":
        assert metric_name(name) == entry
    elif kind == "sizes":  # every named size builds settings of its own shape
        config = AutoencoderConfig.named(name, token_size=32)
        assert all(getattr(config, key) == value for key, value in entry.items() if key != "window")
    elif kind == "pretrained":  # typed entries: files, a licence, a task and bands
        assert entry.files and entry.licence in ("MIT", "Apache-2.0") and entry.bands and entry.task
        assert (entry.wheel is None) or (entry.package is None)  # one place holds the files
    else:  # a shipped autoencoder: a folder whose card types and whose files match the card
        card = shipped.card(name)
        assert card.url == name and shipped.file_hashes(entry) == card.files
