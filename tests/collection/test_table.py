"""The collection table: file and S3 collections read back alike, one commit per add, past versions readable,
concurrent collects lose nothing, one token language per collection, and clear errors for buckets and endpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from geosane import storage
from geosane.collection import Collection, collect, sources
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from ..helpers import assert_bit_exact, free_port, import_geosane
from .helpers import source_of, timm_state


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


def test_unreachable_s3_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-not-shown")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-not-shown")
    with pytest.raises(GeoSANEError, match=r"cannot .* s3://nowhere/c\S* \(endpoint http://127.0.0.1:\d+\)") as info:
        Collection("s3://nowhere/c").add([source_of(timm_state("test_resnet"))], progress=False)
    assert "secret-not-shown" not in str(info.value)


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


def test_a_missing_bucket_is_an_error_unless_creating_it_is_asked_for(s3_server: str) -> None:
    import boto3

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
