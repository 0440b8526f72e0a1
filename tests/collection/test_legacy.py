"""The first layout: read, migrated, and ids of the file order rewritten with every old id kept as an alias."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geosane.collection import Collection, collect, model_id
from geosane.collection.legacy import write_first_layout
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from ..helpers import assert_bit_exact
from .helpers import source_of, timm_state


def test_first_layout_is_read_and_migrated(tmp_path: Path) -> None:
    sds = {"a": timm_state("test_resnet", num_classes=3), "b": timm_state("test_vit", num_classes=3)}
    url = str(tmp_path / "old")
    records = write_first_layout(url, sds, token_size=64)
    old_files = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    old = Collection(url)
    assert [r.id for r in old.records()] == [r.id for r in records] and old.version is None
    assert_bit_exact(sds["a"], old.export("a"))
    with pytest.raises(GeoSANEError, match="first layout is read only; convert it with `geosane collection migrate"):
        old.add([source_of(timm_state("test_convnext"))], progress=False)
    assert old.migrate(progress=False) == 2
    migrated = Collection(url)
    assert migrated.version is not None and [r.id for r in migrated.records()] == [r.id for r in records]
    for name, sd in sds.items():
        assert_bit_exact(sd, migrated.export(name))
    assert migrated.config() == TokenizerConfig(token_size=64)
    assert {p: p.read_bytes() for p in old_files} == old_files, "migrate leaves the old files as they were"
    migrated.add([source_of(timm_state("test_convnext", num_classes=3), "c")], progress=False)
    assert len(Collection(url).records()) == 3
    version = Collection(url).version
    assert migrated.migrate(progress=False) == 0  # a table with canonical ids: nothing to do, nothing committed
    assert Collection(url).version == version


# ------------------------------------------------------------------------------ buckets and credentials


def test_migrate_rewrites_ids_of_the_file_order_keeping_them_as_aliases(tmp_path: Path, monkeypatch) -> None:
    """A collection of GeoSANE 0.1 (ids hashed in the file's order) gets canonical ids in one commit; the old id
    still finds the model, exports stay bit-exact, the earlier version reads as it was, and collecting the same
    model again adds nothing."""
    from geosane.collection import records as record_module

    url = str(tmp_path / "old")
    monkeypatch.setattr(record_module, "model_id", record_module.ordered_id)  # collect as 0.1 did
    collect(["timm:test_resnet?seed=0", "timm:test_resnet?seed=1"], url, token_size=64, progress=False)
    monkeypatch.undo()
    old = Collection(url)
    before = {r.id: old.export(r) for r in old.records()}
    version = old.version
    assert old.migrate(progress=False) == 2
    migrated = Collection(url)
    assert migrated.version == version + 1
    for old_id, state in before.items():
        record = migrated.record(old_id)  # the old id is an alias
        assert record.id == model_id(state) != old_id and record.aliases == [old_id]
        assert_bit_exact(state, migrated.export(record))
    assert {r.id for r in Collection(url, version).records()} == set(before)  # history kept
    assert collect(["timm:test_resnet?seed=0"], url, progress=False)[0] == []
    assert Collection(url).migrate(progress=False) == 0  # up to date: nothing committed
    assert Collection(url).version == version + 1


def test_migrate_merges_rows_of_one_model_keeping_every_old_id(tmp_path: Path, monkeypatch) -> None:
    """0.1 gave a ``.safetensors`` and a ``.pt`` of the same weights (in another tensor order) two ids: migrated,
    they are one row of the canonical id, both old ids find it, and the count is the models written."""
    import random

    from safetensors.torch import save_file

    from geosane.collection import records as record_module

    state = timm_state("test_resnet", num_classes=3)
    shuffled = list(state.items())
    random.Random(0).shuffle(shuffled)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    torch.save(dict(shuffled), tmp_path / "model.pt")
    url = str(tmp_path / "old")
    monkeypatch.setattr(record_module, "model_id", record_module.ordered_id)  # collect as 0.1 did
    files = [str(tmp_path / "model.safetensors"), str(tmp_path / "model.pt"), "timm:test_vit?num_classes=3"]
    collect(files, url, token_size=64, progress=False)
    monkeypatch.undo()
    old_ids = [r.id for r in Collection(url).records()]
    assert len(old_ids) == 3  # the one model twice, under two ids
    assert Collection(url).migrate(progress=False) == 2  # two models got their canonical ids
    migrated = Collection(url)
    ids = [r.id for r in migrated.records()]
    assert len(ids) == len(set(ids)) == 2 and model_id(state) in ids
    for old_id in old_ids[:2]:
        assert migrated.record(old_id).id == model_id(state)  # both old ids are aliases of the one row
    assert_bit_exact(dict(sorted(state.items())), dict(sorted(migrated.export(model_id(state)).items())))
    assert Collection(url).migrate(progress=False) == 0


def test_a_first_layout_migration_counts_what_it_wrote(tmp_path: Path, monkeypatch) -> None:
    import random

    from geosane.collection import records as record_module

    state = timm_state("test_resnet", num_classes=3)
    shuffled = list(state.items())
    random.Random(1).shuffle(shuffled)
    url = str(tmp_path / "old")
    monkeypatch.setattr(record_module, "model_id", record_module.ordered_id)  # ids as 0.1 gave them
    written = write_first_layout(url, {"a": state, "a-shuffled": dict(shuffled), "b": timm_state("test_vit")}, 64)
    monkeypatch.undo()
    assert len({r.id for r in written}) == 3
    count = Collection(url).migrate(progress=False)
    records = Collection(url).records()
    assert count == len(records) == 2
    assert all(Collection(url).record(r.id).id == model_id(state) for r in written[:2])
