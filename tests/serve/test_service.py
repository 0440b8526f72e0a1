"""The service without HTTP: the served weights are the library's for the same seed, identical requests are
answered from storage, encoded anchors are reused, and a damaged or foreign file is never served."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load as load_safetensors

import geosane
from geosane.config import make
from geosane.generation import GenerateConfig
from geosane.serve import DamagedResult, GenerationService, ServeConfig

REQUEST = {"prompt": "timm:test_resnet?num_classes=5", "candidates": 2, "seed": 3}


def request(**changes) -> GenerateConfig:
    """A request's body as the service receives it: generation's settings, validated."""
    return make(GenerateConfig, **{**REQUEST, **changes})


@pytest.fixture
def services():
    """Services made by a test, closed after it (their workers stop polling)."""
    made: list[GenerationService] = []

    def make(**settings) -> GenerationService:
        made.append(GenerationService(ServeConfig(**settings)))
        return made[-1]

    yield make
    for service in made:
        service.close()


def wait_done(service: GenerationService, job: str) -> dict:
    for _ in range(600):
        state = service.state(job)
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish")


def test_identical_requests_are_answered_from_storage_with_the_librarys_weights(services, tmp_path: Path) -> None:
    service = services(storage=str(tmp_path / "jobs"))
    status, answer = service.submit(request())
    assert status == 202 and answer["state"] == "queued"
    state = wait_done(service, answer["id"])
    assert state["state"] == "done", state
    served = load_safetensors(service.read(answer["id"], "model-1.safetensors"))
    (expected,) = geosane.generate("geosane:small", REQUEST["prompt"], use_ray=False, candidates=2, seed=3)
    assert served.keys() == expected.state_dict.keys()
    assert all(bool((served[k] == expected.state_dict[k]).all()) for k in served)
    again, cached = service.submit(request())
    assert again == 200 and cached["cached"] and cached["id"] == answer["id"]
    assert service.summary()["jobs_started"] == 1 and service.metrics.snapshot()["cache_hits"] == 1
    other = services(storage=str(tmp_path / "jobs"))  # a new replica finds it in storage
    assert other.submit(request())[0] == 200
    assert service.read(answer["id"], "../../etc/passwd") is None


def test_ids_and_names_the_service_did_not_make_never_reach_storage(services, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "job.json").write_text(json.dumps({"state": "done", "files": ["secret.txt"], "sha256": {}}))
    service = services(storage=str(tmp_path / "jobs"))
    for job in ("..", "../jobs", "%2e%2e", "/etc", "0123456789abcdeg", "0123456789ABCDEF", "0123456789abcdef0"):
        assert service.state(job) == {"state": "unknown"}
        assert service.read(job, "secret.txt") is None and service.read(job, "job.json") is None
    with pytest.raises(geosane.GeoSANEError, match="not a job id"):
        service.folder("..")


def test_a_damaged_result_is_an_error_naming_the_job_and_the_file(services, tmp_path: Path) -> None:
    service = services(storage=str(tmp_path / "jobs"))
    job = service.submit(request())[1]["id"]
    assert wait_done(service, job)["state"] == "done"
    folder = tmp_path / "jobs" / job
    weights = (folder / "model-1.safetensors").read_bytes()
    (folder / "model-1.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated in storage
    with pytest.raises(DamagedResult, match=f"job {job}: model-1.safetensors is damaged"):
        service.read(job, "model-1.safetensors")
    (folder / "model-1.safetensors").write_bytes(weights)
    assert load_safetensors(service.read(job, "model-1.safetensors"))  # whole again: served
    (folder / "model-1.md").unlink()
    with pytest.raises(DamagedResult, match="model-1.md is missing"):
        service.read(job, "model-1.md")
    summary = json.loads((folder / "job.json").read_text())
    card = json.loads((folder / "model-1.json").read_text())
    card["weights_sha256"] = "0" * 64  # a card that vouches for other weights, rehashed in job.json
    (folder / "model-1.json").write_text(json.dumps(card))
    summary["sha256"]["model-1.json"] = geosane.storage.sha256((folder / "model-1.json").read_bytes())
    (folder / "job.json").write_text(json.dumps(summary))
    with pytest.raises(DamagedResult, match="weights_sha256 of its card"):
        service.read(job, "model-1.safetensors")
    (folder / "job.json").write_text("{half")
    with pytest.raises(DamagedResult, match="job.json is damaged"):
        service.state(job)


def test_a_request_that_changes_only_the_sampling_reuses_the_encoded_anchors(
    services, tmp_path: Path, monkeypatch
) -> None:
    service = services(storage=str(tmp_path / "jobs"))
    encodes = []
    encode = service.autoencoder.encode
    monkeypatch.setattr(service.autoencoder, "encode", lambda tokens: encodes.append(1) or encode(tokens))
    first = service.submit(request())[1]["id"]
    assert wait_done(service, first)["state"] == "done" and len(encodes) == 1  # the prompt, its one anchor
    second = service.submit(request(bandwidth=0.2, candidates=3))[1]["id"]
    assert wait_done(service, second)["state"] == "done"
    assert len(encodes) == 1 and service.metrics.snapshot()["anchor_cache_hits"] == 1  # nothing encoded again
    served = load_safetensors(service.read(second, "model-1.safetensors"))
    (expected,) = geosane.generate(
        "geosane:small", REQUEST["prompt"], use_ray=False, candidates=3, seed=3, bandwidth=0.2
    )
    assert all(bool((served[k] == expected.state_dict[k]).all()) for k in served)  # the same weights as without
    service.submit(request(seed=4))  # another seed: another prompt initialization, encoded afresh
    assert wait_done(service, service.job_id(request(seed=4)))["state"] == "done"
    assert len(encodes) == 2


def test_a_full_queue_is_refused_with_429_and_a_job_in_flight_is_joined(services, tmp_path: Path, monkeypatch) -> None:
    service = services(storage=str(tmp_path / "jobs"), max_queue=1)
    release = threading.Event()
    monkeypatch.setattr(service, "run", lambda job, config: release.wait(30) and None)
    assert service.submit(request())[0] == 202
    assert service.submit(request())[0] == 202  # the same job again: joined, not a second one
    status, answer = service.submit(request(seed=4))
    assert status == 429 and "queue is full" in answer["error"]
    release.set()
    summary = service.summary()
    assert summary["jobs_started"] <= 1 and summary["jobs_joined"] == 1 and summary["jobs_submitted"] == 1


def test_a_failed_jobs_error_is_kept_for_every_reader(services, tmp_path: Path) -> None:
    service = services(storage=str(tmp_path / "jobs"))
    job = service.submit(request(anchors="dataset=no_such_data"))[1]["id"]
    state = wait_done(service, job)
    assert state["state"] == "failed" and "no_such_data" in state["error"]


def test_a_job_cut_short_is_redone_and_a_finished_one_survives_its_replica(services, tmp_path: Path) -> None:
    """A replica killed mid-job leaves files but no ``job.json``: the job is not done, and a new replica redoes it;
    once done, any new replica serves it from storage."""
    first = services(storage=str(tmp_path / "jobs"))
    job = first.job_id(request())
    folder = tmp_path / "jobs" / job
    folder.mkdir(parents=True)
    (folder / "model-1.safetensors").write_bytes(b"half a file")  # what a killed replica left
    assert first.state(job)["state"] == "unknown" and first.read(job, "model-1.safetensors") is None
    status, _ = first.submit(request())
    assert status == 202 and wait_done(first, job)["state"] == "done"
    assert load_safetensors(first.read(job, "model-1.safetensors"))  # rewritten whole
    replacement = services(storage=str(tmp_path / "jobs"))
    assert replacement.submit(request())[0] == 200 and replacement.summary()["jobs_started"] == 0
