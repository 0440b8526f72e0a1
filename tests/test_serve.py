"""Generation on demand: requests are checked at once (422 naming the field), queued within bounds (429), answered
from storage when identical, and the served weights equal the library's for the same seed, over real HTTP on
127.0.0.1 through Ray Serve."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load as load_safetensors

import geosane
from geosane.serve import GenerationService, ServeConfig, parse_request

from .helpers import free_port

REQUEST = {"prompt": "timm:test_resnet?num_classes=5", "candidates": 2, "seed": 3}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**REQUEST, "bandwidth": -1}, "bandwidth"),
        ({**REQUEST, "bandwidth": "wide"}, "bandwidth"),
        ({**REQUEST, "candidates": 10_000}, "candidates"),
        ({**REQUEST, "sampling": "nearest"}, "sampling"),
        ({**REQUEST, "bandwidth": None}, "bandwidth"),
        ({**REQUEST, "seed": True}, "seed"),
        ({**REQUEST, "colour": "red"}, "colour"),
        ({"seed": 1}, "prompt"),
        ({**REQUEST, "prompt": "timm:no_such_net"}, "prompt"),
        ([1, 2], "(body)"),
    ],
)
def test_a_bad_request_is_refused_naming_its_field(body, field) -> None:
    status, answer = parse_request(body, max_candidates=16)
    assert status == 422 and answer["field"] == field and answer["reason"]


def test_a_good_request_becomes_the_generation_settings() -> None:
    config = parse_request({**REQUEST, "bandwidth": 0}, max_candidates=16)  # an integer where a number is asked
    assert config.prompt == REQUEST["prompt"] and config.bandwidth == 0.0 and config.candidates == 2


def wait_done(service: GenerationService, job: str) -> dict:
    for _ in range(600):
        state = service.state(job)
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish")


def test_identical_requests_are_answered_from_storage_with_the_librarys_weights(tmp_path: Path) -> None:
    service = GenerationService(ServeConfig(storage=str(tmp_path / "jobs")))
    status, answer = service.submit(dict(REQUEST))
    assert status == 202 and answer["state"] == "queued"
    state = wait_done(service, answer["id"])
    assert state["state"] == "done", state
    served = load_safetensors(service.read(answer["id"], "model-1.safetensors"))
    (expected,) = geosane.generate("geosane:small", REQUEST["prompt"], use_ray=False, candidates=2, seed=3)
    assert served.keys() == expected.state_dict.keys()
    assert all(bool((served[k] == expected.state_dict[k]).all()) for k in served)
    again, cached = service.submit(dict(REQUEST))
    assert again == 200 and cached["cached"] and cached["id"] == answer["id"]
    assert service.counts["jobs_run"] == 1 and service.counts["cache_hits"] == 1
    other = GenerationService(ServeConfig(storage=str(tmp_path / "jobs")))  # a new replica finds it in storage
    assert other.submit(dict(REQUEST))[0] == 200
    assert service.read(answer["id"], "../../etc/passwd") is None


def test_a_request_that_changes_only_the_sampling_reuses_the_encoded_anchors(tmp_path: Path, monkeypatch) -> None:
    service = GenerationService(ServeConfig(storage=str(tmp_path / "jobs")))
    encodes = []
    encode = service.autoencoder.encode
    monkeypatch.setattr(service.autoencoder, "encode", lambda tokens: encodes.append(1) or encode(tokens))
    first = service.submit(dict(REQUEST))[1]["id"]
    assert wait_done(service, first)["state"] == "done" and len(encodes) == 1  # the prompt, its one anchor
    wider = {**REQUEST, "bandwidth": 0.2, "candidates": 3}
    second = service.submit(dict(wider))[1]["id"]
    assert wait_done(service, second)["state"] == "done"
    assert len(encodes) == 1 and service.counts["anchor_cache_hits"] == 1  # nothing encoded again
    served = load_safetensors(service.read(second, "model-1.safetensors"))
    (expected,) = geosane.generate(
        "geosane:small", REQUEST["prompt"], use_ray=False, candidates=3, seed=3, bandwidth=0.2
    )
    assert all(bool((served[k] == expected.state_dict[k]).all()) for k in served)  # the same weights as without
    service.submit({**REQUEST, "seed": 4})  # another seed: another prompt initialization, encoded afresh
    assert wait_done(service, service.job_id(parse_request({**REQUEST, "seed": 4}, 16)))["state"] == "done"
    assert len(encodes) == 2


def test_a_full_queue_is_refused_with_429(tmp_path: Path, monkeypatch) -> None:
    service = GenerationService(ServeConfig(storage=str(tmp_path / "jobs"), max_queue=1))
    release = threading.Event()
    monkeypatch.setattr(service, "run", lambda job, config: release.wait(30))
    assert service.submit(dict(REQUEST))[0] == 202
    assert service.submit(dict(REQUEST))[0] == 202  # the same job again: not a second one
    status, answer = service.submit({**REQUEST, "seed": 4})
    assert status == 429 and "queue is full" in answer["error"]
    release.set()


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_service_answers_over_http(ray_session, tmp_path: Path) -> None:
    from ray import serve as ray_serve

    from geosane.serve import serve

    port = free_port()
    serve(ServeConfig(storage=str(tmp_path / "jobs"), port=port), blocking=False)
    base = f"http://127.0.0.1:{port}"
    try:
        status, body = http("GET", f"{base}/healthz")
        assert status == 200 and json.loads(body)["autoencoder"] == "geosane:small"
        status, body = http("POST", f"{base}/generate", {**REQUEST, "bandwidth": -1})
        assert status == 422 and json.loads(body).get("field") == "bandwidth", body
        status, body = http("POST", f"{base}/generate", REQUEST)
        assert status == 202
        job = json.loads(body)["id"]
        for _ in range(300):
            state = json.loads(http("GET", f"{base}/jobs/{job}")[1])
            if state["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert state["state"] == "done", state
        status, weights = http("GET", f"{base}/jobs/{job}/model-1.safetensors")
        assert status == 200 and load_safetensors(weights)
        card = json.loads(http("GET", f"{base}/jobs/{job}/model-1.json")[1])
        assert card["seed"] == 3 and card["autoencoder"]["url"] == "geosane:small"
        assert http("GET", f"{base}/jobs/{job}/nothing.bin")[0] == 404
        assert json.loads(http("POST", f"{base}/generate", REQUEST)[1])["cached"] is True
        metrics = scrape_until(lambda text: 'outcome="done"' in text and 'status="422"' in text)
        assert metric(metrics, "ray_geosane_jobs_total", 'outcome="done"') == 1.0
        assert metric(metrics, "ray_geosane_requests_total", 'status="202"') == 1.0
        assert metric(metrics, "ray_geosane_requests_total", 'status="200"') == 1.0  # the cached answer
        assert metric(metrics, "ray_geosane_job_seconds_count", "") == 1.0
    finally:
        ray_serve.shutdown()


def scrape_until(ready, seconds: float = 60) -> str:
    """Ray's Prometheus endpoint on this node, read until ``ready(text)`` (the agent exports every few seconds)."""
    import ray

    url = f"http://127.0.0.1:{ray._private.worker._global_node.metrics_export_port}/metrics"
    deadline = time.monotonic() + seconds
    while True:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        if ready(text) or time.monotonic() > deadline:
            return text
        time.sleep(1)


def metric(text: str, name: str, label: str) -> float:
    """The sum of a metric's samples whose labels include ``label``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line.partition("}")[0]
    )


def test_a_killed_replica_loses_no_finished_result(ray_session, tmp_path: Path) -> None:
    """A finished job is served by the replica that replaces a killed one; the job the killed one was running is
    not done (no ``job.json``) and is queued afresh when asked again, not answered from a half-written folder."""
    import ray
    from ray import serve as ray_serve

    from geosane.serve import serve

    port = free_port()
    serve(ServeConfig(storage=str(tmp_path / "jobs"), port=port), blocking=False)
    base = f"http://127.0.0.1:{port}"
    try:
        finished = json.loads(http("POST", f"{base}/generate", REQUEST)[1])["id"]
        wait_http(base, finished, ("done",))
        slow = {"prompt": "timm:resnet50?num_classes=5", "seed": 1}
        running = json.loads(http("POST", f"{base}/generate", slow)[1])["id"]
        wait_http(base, running, ("running",))
        (replica,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "Generator" in a["name"]]
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        for _ in range(300):  # Serve starts a replacement
            if http_or_none(f"{base}/healthz") == 200:
                break
            time.sleep(0.5)
        assert http("GET", f"{base}/jobs/{running}")[0] == 404  # cut short: not done, whatever files it left
        status, weights = http("GET", f"{base}/jobs/{finished}/model-1.safetensors")
        assert status == 200 and load_safetensors(weights)
        status, body = http("POST", f"{base}/generate", slow)
        assert status == 202 and json.loads(body)["id"] == running and not json.loads(body).get("cached")
    finally:
        ray_serve.shutdown()


def wait_http(base: str, job: str, states: tuple[str, ...]) -> None:
    for _ in range(600):
        state = json.loads(http("GET", f"{base}/jobs/{job}")[1]).get("state")
        if state in states:
            return
        assert state != "failed"
        time.sleep(0.1)
    raise AssertionError(f"job {job} never reached {states}")


def http_or_none(url: str) -> int | None:
    try:
        return http("GET", url)[0]
    except OSError:  # the proxy is between replicas
        return None


def test_a_job_cut_short_is_redone_and_a_finished_one_survives_its_replica(tmp_path: Path) -> None:
    """A replica killed mid-job leaves files but no ``job.json``: the job is not done, and a new replica redoes it;
    once done, any new replica serves it from storage."""
    first = GenerationService(ServeConfig(storage=str(tmp_path / "jobs")))
    job = first.job_id(parse_request(dict(REQUEST), 16))
    folder = tmp_path / "jobs" / job
    folder.mkdir(parents=True)
    (folder / "model-1.safetensors").write_bytes(b"half a file")  # what a killed replica left
    assert first.state(job)["state"] == "unknown" and first.read(job, "model-1.safetensors") is None
    status, _ = first.submit(dict(REQUEST))
    assert status == 202 and wait_done(first, job)["state"] == "done"
    assert load_safetensors(first.read(job, "model-1.safetensors"))  # rewritten whole
    replacement = GenerationService(ServeConfig(storage=str(tmp_path / "jobs")))
    assert replacement.submit(dict(REQUEST))[0] == 200 and replacement.counts["jobs_run"] == 0
