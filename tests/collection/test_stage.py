"""The collect stage: an interrupted collect leaves the previous collection as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.collection import Collection

from ..helpers import assert_bit_exact
from .helpers import source_of, timm_state


class Interrupt(KeyboardInterrupt):
    """What Ctrl-C raises, from inside a collect."""


def test_interrupted_collect_leaves_the_previous_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = Collection(str(tmp_path / "c"))
    first = timm_state("test_resnet")
    collection.add([source_of(first)], progress=False)
    version = collection.version

    def models():  # the second model fails while it is read, after the first was written to a data file
        yield source_of(timm_state("test_vit"), "a")
        raise Interrupt()

    with pytest.raises(KeyboardInterrupt):
        collection.add(models(), progress=False)
    # and a failure in the commit itself
    import lance

    def failing_commit(*args, **kwargs):
        raise Interrupt()

    monkeypatch.setattr(lance.LanceDataset, "commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        collection.add([source_of(timm_state("test_convnext"), "b")], progress=False)
    monkeypatch.undo()
    again = Collection(str(tmp_path / "c"))
    assert again.version == version and [r.name for r in again.records()] == ["m"]
    assert_bit_exact(first, again.export(again.records()[0].id))
    assert again.verify(progress=False) == []
