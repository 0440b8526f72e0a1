from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geosane import sources, storage
from geosane.collection import MANIFEST, Collection
from geosane.errors import GeoSANEError
from geosane.sources import ModelSource
from geosane.tokenizer import TokenizerConfig

from .helpers import TIMM_MODELS, assert_bit_exact, free_port


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
    from geosane import pretrained

    uri = next(u for u in pretrained.expand(f"pretrained:{group}") if "6b" in u)
    collection = Collection(str(tmp_path / "c"))
    record = collection.add([sources.load(uri)], progress=False)[0]
    assert record.in_chans == 6 and record.bands == pretrained.S2_6 and record.licence == "Apache-2.0"
    assert record.num_params > (19_000_000 if group.endswith("1.0.0") else 7_000_000)
    location = pretrained.location(uri)
    original = sources.read_onnx(storage.read_bytes(location), location)
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
    before = (tmp_path / "c" / MANIFEST).read_bytes()
    assert collection.add([source_of(sd, "again")], progress=False) == []
    assert (tmp_path / "c" / MANIFEST).read_bytes() == before
    assert len(collection.records()) == 1


def test_token_language_is_fixed_per_collection(tmp_path: Path) -> None:
    collection = Collection(str(tmp_path / "c"))
    collection.add([source_of(timm_state("test_resnet"))], TokenizerConfig(token_size=100), progress=False)
    with pytest.raises(GeoSANEError, match="token size 100 in dense mode; cannot add models with token size 230"):
        collection.add([source_of(timm_state("test_vit"))], TokenizerConfig(token_size=230), progress=False)


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_collect_leaves_the_previous_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    collection = Collection(str(root))
    first = timm_state("test_resnet")
    collection.add([source_of(first)], progress=False)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    # interrupt in the middle of writing the second model's layout, after its shard is complete
    real_dumps = json.dumps
    calls = {"n": 0}

    def flaky_dumps(obj, *args, **kwargs):
        if isinstance(obj, dict) and "layers" in obj:
            calls["n"] += 1
            if calls["n"] == 2:
                raise Interrupt()
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr("geosane.collection.json.dumps", flaky_dumps)
    models = [source_of(timm_state("test_vit"), "a"), source_of(timm_state("test_convnext"), "b")]
    with pytest.raises(KeyboardInterrupt):
        collection.add(models, progress=False)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before, "an interrupted collect must leave exactly the previous collection"
    assert_bit_exact(first, Collection(str(root)).export(collection.records()[0].id))

    # and a failure while writing the manifest itself leaves the old manifest, with no temporary files
    monkeypatch.setattr("geosane.collection.json.dumps", real_dumps)
    real_write = storage.write_bytes

    def failing_write(url: str, data: bytes) -> None:
        with storage.atomic_open(url) as handle:
            handle.write(data[: len(data) // 2])
            raise Interrupt()

    monkeypatch.setattr("geosane.collection.storage.write_bytes", failing_write)
    with pytest.raises(KeyboardInterrupt):
        collection.add(models, progress=False)
    monkeypatch.setattr("geosane.collection.storage.write_bytes", real_write)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_unreachable_s3_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-not-shown")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-not-shown")
    with pytest.raises(
        GeoSANEError, match=r"cannot .* s3://nowhere/c/manifest.json \(endpoint http://127.0.0.1:\d+\)"
    ) as info:
        Collection("s3://nowhere/c").add([source_of(timm_state("test_resnet"))], progress=False)
    assert "secret-not-shown" not in str(info.value)


def test_records_name_problems(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="no collection here"):
        Collection(str(tmp_path)).records()
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(GeoSANEError, match="manifest is not valid JSON"):
        Collection(str(tmp_path)).records()
    collection = Collection(str(tmp_path / "c"))
    collection.add([source_of(timm_state("test_resnet"), "r")], progress=False)
    with pytest.raises(GeoSANEError, match="no model 'nope'"):
        collection.record("nope")
    record = collection.record("r")
    # kept tensors that do not match the layout are refused, not silently decoded
    save_file({"x": torch.zeros(1)}, tmp_path / "c" / record.kept_file)
    with pytest.raises(GeoSANEError, match="kept tensor .* missing"):
        collection.export(record.id)


def test_each_model_stores_its_scale_and_older_collections_still_have_one(tmp_path: Path) -> None:
    from geosane.autoencoder import Scale

    collection = Collection(str(tmp_path / "c"))
    record = collection.add([source_of(timm_state("test_resnet"))], progress=False)[0]
    tokens = collection.tokens(record)
    expected = Scale.of(tokens.tokens, tokens.valid)
    assert (record.token_mean, record.token_std) == (float(expected.mean), float(expected.std))
    # a manifest written before scales were stored: the scale is computed from the model's tokens
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    for row in manifest["models"]:
        del row["token_mean"], row["token_std"]
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(manifest))
    old = Collection(str(tmp_path / "c")).record(record.id)
    assert old.token_mean is None
    scale = Collection(str(tmp_path / "c")).scale(old)
    assert torch.equal(scale.mean, expected.mean) and torch.equal(scale.std, expected.std)


def test_local_paths_become_absolute_for_workers_that_run_elsewhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("out/collection") == str(tmp_path / "out" / "collection")
    assert storage.absolute("s3://bucket/c") == "s3://bucket/c" and storage.absolute("file:///x/c") == "file:///x/c"
