from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from geosane import storage
from geosane.collection import Collection, collect, formats, model_id, sources
from geosane.collection.legacy import write_first_layout
from geosane.collection.sources import ModelSource
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from ..helpers import TIMM_MODELS, assert_bit_exact, free_port, import_geosane


def source_of(state_dict: dict[str, torch.Tensor], name: str = "m") -> ModelSource:
    return ModelSource(
        name=name, uri=f"memory:{name}", sha256=sources.content_sha256(state_dict), state_dict=state_dict
    )


def timm_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


def collect_and_export(root: str, state_dict: dict[str, torch.Tensor], mode: str = "dense") -> dict[str, torch.Tensor]:
    collection = Collection(root)
    added = collection.add([source_of(state_dict)], TokenizerConfig(mode=mode), progress=False)
    record = added[0] if added else collection.record(sources.content_sha256(state_dict)[:16])
    return collection.export(record.id)


@pytest.mark.parametrize("in_chans", [3, 13])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_export_bit_exact(tmp_path: Path, name: str, in_chans: int) -> None:
    sd = timm_state(name, in_chans=in_chans, num_classes=10)
    assert_bit_exact(sd, collect_and_export(f"file://{tmp_path}/c", sd))


TORCHGEO_MODELS = {
    "resnet18": lambda m: m.resnet18(weights=None, in_chans=13),
    "vit_small_patch16_224": lambda m: m.vit_small_patch16_224(weights=None, in_chans=13),
    "swin_t": lambda m: m.swin_t(weights=None),
    "dofa_small_patch16_224": lambda m: m.dofa_small_patch16_224(),
    "farseg": lambda m: m.FarSeg(backbone="resnet18", classes=4, backbone_pretrained=False),
    "fcsiamdiff": lambda m: m.FCSiamDiff(in_channels=4, classes=2, encoder_weights=None),
}


@pytest.mark.parametrize("name", TORCHGEO_MODELS)
def test_torchgeo_models_export_bit_exact(tmp_path: Path, name: str) -> None:
    import torchgeo.models

    torch.manual_seed(0)
    sd = TORCHGEO_MODELS[name](torchgeo.models).state_dict()
    assert_bit_exact(sd, collect_and_export(str(tmp_path / "c"), sd, mode="per-channel"))


def test_real_pretrained_weights_export_bit_exact(tmp_path: Path, shared: Path) -> None:
    files = [shared / "weights/presto/default_model.pt"] + sorted((shared / "weights/galileo_nano").glob("*.pt"))
    uris = [f.uri for f in sources.find([str(f) for f in files])]
    collection = Collection(str(tmp_path / "c"))
    added = collection.add((sources.load(u) for u in uris), progress=False)
    assert len(added) == 5
    for uri, record in zip(uris, added, strict=True):
        original = torch.load(uri, map_location="cpu", weights_only=True)
        assert_bit_exact(original, collection.export(record.id))
        assert record.source_sha256 == __import__("hashlib").sha256(Path(uri).read_bytes()).hexdigest()


@pytest.mark.parametrize("group", ["ukis-csmask-1.0.0", "ukis-csmask-0.2.1"])
def test_real_onnx_specialists_export_bit_exact(tmp_path: Path, group: str) -> None:
    """The ukis-csmask cloud/shadow U-Nets, read from their registry wheels (set-up downloads them)."""
    from geosane.collection import pretrained

    uri = next(u for u in pretrained.expand(f"pretrained:{group}") if "6b" in u)
    collection = Collection(str(tmp_path / "c"))
    record = collection.add([sources.load(uri)], progress=False)[0]
    assert record.in_chans == 6 and record.bands == pretrained.S2_6 and record.licence == "Apache-2.0"
    assert record.num_params > (19_000_000 if group.endswith("1.0.0") else 7_000_000)
    location = pretrained.location(uri)
    original = formats.read_onnx(storage.read_bytes(location), location)
    assert_bit_exact(original, collection.export(record.id))


def test_file_and_s3_collections_read_back_identically(tmp_path: Path, bucket: str) -> None:
    sds = [timm_state("test_resnet", in_chans=4, num_classes=3), timm_state("test_vit", num_classes=5)]
    local, remote = Collection(f"file://{tmp_path}/c"), Collection(f"{bucket}/collections/c")
    for collection in (local, remote):
        collection.add(
            [source_of(sd, f"m{i}") for i, sd in enumerate(sds)], TokenizerConfig(token_size=64), progress=False
        )
    local_records, remote_records = local.records(), remote.records()
    assert [r.id for r in local_records] == [r.id for r in remote_records]
    for a, b, sd in zip(local_records, remote_records, sds, strict=True):
        ta, tb = local.tokens(a), remote.tokens(b)
        assert (
            torch.equal(ta.tokens, tb.tokens)
            and torch.equal(ta.mask, tb.mask)
            and torch.equal(ta.positions, tb.positions)
        )
        assert ta.layout == tb.layout
        assert_bit_exact(sd, remote.export(b.id))
    # models can also be collected from object storage
    storage.write_bytes(f"{bucket}/models/w.safetensors", _safetensors_bytes(sds[0]))
    found = [f.uri for f in sources.find([f"{bucket}/models"])]
    assert found == [f"{bucket}/models/w.safetensors"]
    assert sorted(sources.load(found[0]).state_dict) == sorted(sds[0])


def _safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sd.items()})


def test_adding_the_same_model_twice_is_a_no_op(tmp_path: Path) -> None:
    sd = timm_state("test_resnet")
    collection = Collection(str(tmp_path / "c"))
    assert len(collection.add([source_of(sd)], progress=False)) == 1
    before = collection.version
    assert collection.add([source_of(sd, "again")], progress=False) == []
    assert collection.version == before, "adding nothing must not commit a version"
    assert len(collection.records()) == 1


def test_token_language_is_fixed_per_collection(tmp_path: Path) -> None:
    collection = Collection(str(tmp_path / "c"))
    collection.add([source_of(timm_state("test_resnet"))], TokenizerConfig(token_size=100), progress=False)
    with pytest.raises(GeoSANEError, match="token size 100 in dense mode; cannot add models with token size 230"):
        collection.add([source_of(timm_state("test_vit"))], TokenizerConfig(token_size=230), progress=False)


class Interrupt(KeyboardInterrupt):
    pass


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


def test_unreachable_s3_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-not-shown")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-not-shown")
    with pytest.raises(GeoSANEError, match=r"cannot .* s3://nowhere/c\S* \(endpoint http://127.0.0.1:\d+\)") as info:
        Collection("s3://nowhere/c").add([source_of(timm_state("test_resnet"))], progress=False)
    assert "secret-not-shown" not in str(info.value)


def test_records_name_problems(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="no collection here"):
        Collection(str(tmp_path)).records()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(GeoSANEError, match="manifest is not valid JSON"):
        Collection(str(tmp_path)).records()
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(GeoSANEError, match="manifest.json: not a GeoSANE collection manifest \\(a JSON list\\)"):
        Collection(str(tmp_path)).records()
    collection = Collection(str(tmp_path / "c"))
    collection.add([source_of(timm_state("test_resnet"), "r")], progress=False)
    with pytest.raises(GeoSANEError, match="no model 'nope'"):
        collection.record("nope")
    with pytest.raises(GeoSANEError, match="no version 99"):
        Collection(str(tmp_path / "c"), version=99).records()


def test_each_model_stores_its_scale_and_older_collections_still_have_one(tmp_path: Path) -> None:
    from geosane.scale import Scale

    collection = Collection(str(tmp_path / "c"))
    record = collection.add([source_of(timm_state("test_resnet"))], progress=False)[0]
    tokens = collection.tokens(record)
    expected = Scale.of(tokens.tokens, tokens.valid)
    assert (record.token_mean, record.token_std) == (float(expected.mean), float(expected.std))
    # a manifest written before scales were stored: the scale is computed from the model's tokens
    write_first_layout(str(tmp_path / "old"), {"m": timm_state("test_resnet")})
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    for row in manifest["models"]:
        del row["token_mean"], row["token_std"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = Collection(str(tmp_path / "old")).record(record.id)
    assert old.token_mean is None
    scale = Collection(str(tmp_path / "old")).scale(old)
    assert torch.equal(scale.mean, expected.mean) and torch.equal(scale.std, expected.std)


def test_local_paths_become_absolute_for_workers_that_run_elsewhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("out/collection") == str(tmp_path / "out" / "collection")
    assert storage.absolute("s3://bucket/c") == "s3://bucket/c" and storage.absolute("file:///x/c") == "file:///x/c"


# ------------------------------------------------------------------------------ table format: commits and versions


def test_every_add_is_one_version_and_past_versions_stay_readable(tmp_path: Path) -> None:
    collection = Collection(str(tmp_path / "c"))
    a, b = timm_state("test_resnet", num_classes=3), timm_state("test_vit", num_classes=3)
    collection.add([source_of(a, "a")], progress=False)
    first = collection.version
    collection.add([source_of(b, "b"), source_of(a, "a-again")], progress=False)
    assert collection.version == first + 1, "one add, one commit"
    past = Collection(str(tmp_path / "c"), version=first)
    assert [r.name for r in past.records()] == ["a"] and [r.name for r in collection.records()] == ["a", "b"]
    assert_bit_exact(a, past.export("a"))
    assert [v["models"] for v in collection.versions()] == [0, 1, 2]
    with pytest.raises(GeoSANEError, match="past version"):
        past.add([source_of(timm_state("test_convnext"))], progress=False)


STRESS_PROCESSES, STRESS_ROUNDS = 8, 3


@pytest.fixture(scope="module")
def pool():
    """Eight processes that have imported GeoSANE, shared by the concurrency tests (spawned: no forked Ray/threads)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(STRESS_PROCESSES) as workers:
        workers.map(import_geosane, range(STRESS_PROCESSES))
        yield workers


# the race is the same on both stores (Lance's conditional commit); S3's own commit path is also covered by the
# faster s3 round trips above, so the S3 stress run is slow
@pytest.mark.parametrize("where", ["file", pytest.param("s3", marks=pytest.mark.slow)])
def test_concurrent_collects_lose_nothing(where: str, tmp_path: Path, request: pytest.FixtureRequest, pool) -> None:
    """8 processes collect into one collection at once, 3 rounds: each its own model, all of them one shared model,
    and one process fails after writing a model. Every model any process reported added is there and exports
    bit-exact; the shared model is listed once; the failure leaves no trace."""
    from ..helpers import collect_in_process

    url = f"file://{tmp_path}/c" if where == "file" else f"{request.getfixturevalue('bucket')}/c"
    reported: set[str] = set()
    for round_ in range(STRESS_ROUNDS):
        jobs = []
        for i in range(STRESS_PROCESSES):
            uris = [f"timm:test_vit?num_classes=3&seed={100 * round_ + i}", "timm:test_resnet?num_classes=3&seed=7"]
            if i == STRESS_PROCESSES - 1:  # fails on its second model, after the first was written
                uris = [f"timm:test_convnext?num_classes=3&seed={round_}", "timm:test_vit?in_chans=-3"]
            jobs.append((url, uris, {k: v for k, v in os.environ.items() if k.startswith("AWS_")}))
        results = pool.starmap(collect_in_process, jobs)
        assert all(isinstance(r, list) for r in results[:-1]), results
        assert isinstance(results[-1], str) and "in_chans must be >= 1" in results[-1]
        reported |= {i for r in results[:-1] for i in r}
    collection = Collection(url)
    records = collection.records()
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)) == STRESS_ROUNDS * (STRESS_PROCESSES - 1) + 1
    assert reported == set(ids)
    for record in records:
        original = sources.load(record.source).state_dict
        assert_bit_exact(original, collection.export(record))
    assert not any(r.name == "test_convnext" for r in records)
    assert collection.verify(progress=False) == []


# ------------------------------------------------------------------------------ verified reads


def test_verify_catches_a_flipped_byte_in_any_data_file(tmp_path: Path) -> None:
    """Flip one byte at a time across the data file that holds a model: every flip is either reported, naming the
    model and the file, or lands where nothing is read (the model still exports bit-exact). Never a wrong model."""
    import shutil

    root = tmp_path / "c"
    collection = Collection(str(root))
    target, other = timm_state("test_resnet", num_classes=3), timm_state("test_vit", num_classes=3)
    collection.add([source_of(target, "target")], TokenizerConfig(token_size=64), progress=False)
    collection.add([source_of(other, "other")], progress=False)
    record = collection.record("target")
    (file,) = [Path(f) for f in collection.files_of(record)]
    assert file.parent == root / "models.lance" / "data"
    pristine = tmp_path / "pristine"
    shutil.copy(file, pristine)
    size = file.stat().st_size
    caught = silent_but_exact = 0
    for offset in np.linspace(0, size - 1, 48).astype(int):
        damaged = bytearray(pristine.read_bytes())
        damaged[offset] ^= 0xFF
        file.write_bytes(bytes(damaged))
        problems = Collection(str(root)).verify(progress=False)
        if problems:
            assert len(problems) == 1 and record.id in problems[0] and file.name in problems[0], problems
            caught += 1
        else:
            assert_bit_exact(target, Collection(str(root)).export(record.id))
            silent_but_exact += 1
    shutil.copy(pristine, file)
    assert Collection(str(root)).verify(progress=False) == []
    print(f"{caught} of 48 flips caught, {silent_but_exact} landed where nothing is read")
    assert caught >= 40, f"only {caught} of 48 flips were caught ({silent_but_exact} landed where nothing is read)"


def test_exports_are_checked_against_the_model_id(tmp_path: Path) -> None:
    """A collection in the first layout has no stored hashes: the id (a hash of the weights) still catches a
    flipped byte in a shard or a kept file."""
    sd = timm_state("test_resnet", num_classes=3)
    (record,) = write_first_layout(str(tmp_path / "old"), {"m": sd}, token_size=64)
    for part in (f"shards/{record.id}.parquet", f"kept/{record.id}.safetensors"):
        path = tmp_path / "old" / part
        pristine = path.read_bytes()
        flipped = bytearray(pristine)
        flipped[len(pristine) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(GeoSANEError, match=rf"model {record.id}"):
            Collection(str(tmp_path / "old")).export(record.id)
        path.write_bytes(pristine)
    assert_bit_exact(sd, Collection(str(tmp_path / "old")).export(record.id))


# ------------------------------------------------------------------------------ the first layout


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


def test_a_missing_bucket_is_an_error_unless_creating_it_is_asked_for(s3_server: str) -> None:
    import boto3

    from geosane.collection import collect

    with pytest.raises(GeoSANEError, match="bucket typo-bucket does not exist; create it, or pass --create-bucket"):
        collect(["timm:test_vit?num_classes=3"], "s3://typo-bucket/c", progress=False)
    client = boto3.client("s3")
    assert "typo-bucket" not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    added, _ = collect(["timm:test_vit?num_classes=3"], "s3://typo-bucket/c", progress=False, create_bucket=True)
    assert [r.id for r in Collection("s3://typo-bucket/c").records()] == [added[0].id]


def test_credentials_never_reach_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:SECRET-IN-URL@127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET-KEY-VALUE")
    with pytest.raises(GeoSANEError) as info:
        Collection("s3://somewhere/c").add([source_of(timm_state("test_resnet"))], progress=False)
    message = str(info.value)  # refused before any request, saying where credentials belong
    assert "127.0.0.1" in message and "carries credentials" in message and "AWS_ACCESS_KEY_ID" in message
    assert "SECRET-IN-URL" not in message and "SECRET-KEY-VALUE" not in message
    assert storage.redact("see https://a:b@host/x and s3://k:v@bucket") == "see https://***@host/x and s3://***@bucket"


def test_one_model_has_one_id_whatever_its_file_format_or_order(tmp_path: Path) -> None:
    """A ``.pt``, a ``.safetensors`` and a shuffled-order ``.pt`` of the same weights are one model."""
    import random

    from safetensors.torch import save_file

    state = timm.create_model("test_resnet", num_classes=3).state_dict()
    shuffled = list(state.items())
    random.Random(0).shuffle(shuffled)
    torch.save(state, tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    torch.save(dict(shuffled), tmp_path / "shuffled.pt")
    files = [str(tmp_path / n) for n in ("model.pt", "model.safetensors", "shuffled.pt")]
    added, named = collect(files, str(tmp_path / "c"), token_size=64, progress=False)
    assert named == 3 and len(added) == 1
    assert added[0].id == model_id(dict(shuffled)) == model_id(state)


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
