"""The service over real HTTP on 127.0.0.1 through Ray Serve, with two replicas: no traversal form serves anything
outside its storage, a request naming a server path is a 422, every read of a job in flight agrees whichever replica
answers, an identical request joins the running job, damaged results are errors, and Ray exports the metrics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import pytest
from safetensors.torch import load as load_safetensors

from geosane.errors import GeoSANEError
from geosane.serve import ServeConfig, serve

from ..helpers import free_port

REQUEST = {"prompt": "timm:test_resnet?num_classes=5", "candidates": 2, "seed": 3}
SLOW = {"prompt": "timm:test_resnet?num_classes=5", "candidates": 16, "seed": 1}  # seconds: read while it runs


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (a client that does not normalize ``..``)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("GET", path, skip_host=False)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def wait_http(base: str, job: str, states: tuple[str, ...], seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = json.loads(http("GET", f"{base}/jobs/{job}")[1])
        if state.get("state") in states:
            return state
        assert state.get("state") != "failed", state
        time.sleep(0.1)
    raise AssertionError(f"job {job} never reached {states}")


@pytest.fixture(scope="module")
def two_replicas(ray_session, tmp_path_factory):
    """``geosane serve --replicas 2`` on 127.0.0.1, with a secret and a fake job beside its storage."""
    from ray import serve as ray_serve

    root = tmp_path_factory.mktemp("serve")
    (root / "secret.txt").write_text("the secret")
    (root / "job.json").write_text(json.dumps({"state": "done", "files": ["secret.txt"], "sha256": {}}))
    port = free_port()
    serve(ServeConfig(storage=str(root / "jobs"), port=port, replicas=2, cpus_per_replica=0.5), blocking=False)
    yield f"http://127.0.0.1:{port}", port, root
    ray_serve.shutdown()


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/../secret.txt",
        "/jobs/%2e%2e/secret.txt",
        "/jobs/%2E%2E/secret.txt",
        "/jobs/%2e%2e/job.json",
        "/jobs/%2e%2e",
        "/jobs/..",
        "/jobs/.%2e/secret.txt",
        "/jobs/%2e%2e%2fsecret.txt/job.json",
        "/jobs/%2fetc/hostname",
        "/jobs/0123456789abcdef/..%2f..%2fsecret.txt",
    ],
)
def test_no_traversal_form_serves_anything_outside_the_storage(two_replicas, path) -> None:
    _, port, _ = two_replicas
    status, body = raw_get(port, path)
    assert status == 404 and b"secret" not in body and b"the secret" not in body, (path, status, body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**REQUEST, "prompt": "timm:test_resnet?pretrained=/etc/hostname"}, "prompt"),
        ({**REQUEST, "data": "imagefolder:/etc"}, "data"),
        ({**REQUEST, "data": "npz:/etc/hostname"}, "data"),
        ({**REQUEST, "prompt_weights": "/etc/hostname"}, "prompt_weights"),
        ({**REQUEST, "seed": 2**70}, "seed"),
        ({**REQUEST, "seed": -1}, "seed"),
    ],
)
def test_a_request_naming_a_server_path_or_a_bad_seed_is_a_422(two_replicas, body, field) -> None:
    base, _, _ = two_replicas
    status, answer = http("POST", f"{base}/generate", body)
    assert status == 422 and json.loads(answer)["field"] == field, answer
    assert b"passwd" not in answer and b"not found" not in answer


def test_replicas_agree_on_a_job_in_flight_and_an_identical_request_joins_it(two_replicas) -> None:
    base, _, root = two_replicas
    status, body = http("POST", f"{base}/generate", SLOW)
    assert status == 202, body
    job = json.loads(body)["id"]
    wait_http(base, job, ("running",))
    joined = [http("POST", f"{base}/generate", SLOW) for _ in range(4)]
    reads = [http("GET", f"{base}/jobs/{job}") for _ in range(16)]
    assert all(status == 202 and json.loads(answer)["id"] == job for status, answer in joined), joined
    assert [status for status, _ in reads] == [200] * 16, reads  # 16 of 16 agree: no replica says "unknown"
    assert {json.loads(answer)["state"] for _, answer in reads} <= {"running", "done"}
    wait_http(base, job, ("done",))
    health = [json.loads(http("GET", f"{base}/healthz")[1]) for _ in range(6)]
    assert all(h["jobs_started"] == 1 and h["jobs_joined"] >= 4 for h in health), health  # one run, by any replica
    status, weights = http("GET", f"{base}/jobs/{job}/model-1.safetensors")
    assert status == 200 and load_safetensors(weights)
    damaged = root / "jobs" / job / "model-1.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    status, answer = http("GET", f"{base}/jobs/{job}/model-1.safetensors")
    assert status == 500 and job.encode() in answer and b"model-1.safetensors is damaged" in answer


def test_the_service_answers_over_http_and_ray_exports_its_metrics(two_replicas) -> None:
    base, _, _ = two_replicas
    status, body = http("GET", f"{base}/healthz")
    assert status == 200 and json.loads(body)["autoencoder"] == "geosane:small"
    status, body = http("POST", f"{base}/generate", {**REQUEST, "bandwidth": -1})
    assert status == 422 and json.loads(body).get("field") == "bandwidth", body
    status, body = http("POST", f"{base}/generate", REQUEST)
    assert status == 202
    job = json.loads(body)["id"]
    wait_http(base, job, ("done",))
    card = json.loads(http("GET", f"{base}/jobs/{job}/model-1.json")[1])
    assert card["seed"] == 3 and card["autoencoder"]["url"] == "geosane:small"
    assert http("GET", f"{base}/jobs/{job}/nothing.bin")[0] == 404
    assert json.loads(http("POST", f"{base}/generate", REQUEST)[1])["cached"] is True
    metrics = scrape_until(lambda text: metric(text, "ray_geosane_jobs_total", 'outcome="done"') >= 2)
    assert metric(metrics, "ray_geosane_jobs_total", 'outcome="done"') >= 2.0  # this job and the one in flight
    assert metric(metrics, "ray_geosane_requests_total", 'status="200"') >= 1.0  # the cached answer
    assert metric(metrics, "ray_geosane_requests_total", 'status="422"') >= 1.0


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


def test_serve_names_what_is_wrong_before_it_starts(tmp_path: Path, capsys) -> None:
    """A missing autoencoder, no replicas, storage inside a collection or a run: errors before "serving"."""
    import geosane

    collection = tmp_path / "collection"
    geosane.collect(["timm:test_resnet?seed=0"], str(collection), token_size=32, progress=False)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")  # what marks an autoencoder run
    cases = [
        (ServeConfig(storage=str(run / "final" / "jobs")), "--storage .* is inside the autoencoder run"),
        (ServeConfig(autoencoder=str(tmp_path / "nope"), storage=str(tmp_path / "s")), "no autoencoder at"),
        (ServeConfig(replicas=0, storage=str(tmp_path / "s")), "--replicas must be >= 1"),
        (ServeConfig(storage=str(collection / "models.lance" / "jobs")), "--storage .* is inside the collection"),
        (ServeConfig(storage=str(collection / "jobs")), "--storage .* is inside the collection"),
        (ServeConfig(data=("mine=/etc",), storage=str(tmp_path / "s")), "expected npz:PATH or imagefolder:DIR"),
        (ServeConfig(prompt_weights=("w=/no/such.safetensors",), storage=str(tmp_path / "s")), "no/such"),
    ]
    for config, message in cases:
        with pytest.raises(GeoSANEError, match=message):
            serve(config, blocking=False)
    assert "serving" not in capsys.readouterr().out
    assert not (tmp_path / "s").exists()


def test_the_job_of_a_killed_replica_is_retried_and_finished_results_survive(two_replicas) -> None:
    """Both replicas killed mid-job: Serve starts others, which serve the jobs finished before; the job that was
    running is taken back once its replica has been silent for a while, and run again to the end. (Last in the
    module: it kills the replicas the other tests share.)"""
    import ray

    base, _, _ = two_replicas
    finished = json.loads(http("POST", f"{base}/generate", REQUEST)[1])["id"]
    wait_http(base, finished, ("done",))
    before = json.loads(http("GET", f"{base}/healthz")[1])
    running = json.loads(http("POST", f"{base}/generate", {**SLOW, "seed": 7})[1])["id"]
    wait_http(base, running, ("running",))
    for replica in [a for a in ray.util.list_named_actors(all_namespaces=True) if "Generator" in a["name"]]:
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    for _ in range(300):  # Serve starts replacements
        if http_or_none(f"{base}/healthz") == 200:
            break
        time.sleep(0.5)
    status, body = http("GET", f"{base}/jobs/{running}")
    assert status == 200 and json.loads(body)["state"] in ("running", "queued", "done")  # never "unknown"
    status, weights = http("GET", f"{base}/jobs/{finished}/model-1.safetensors")
    assert status == 200 and load_safetensors(weights)
    wait_http(base, running, ("done",), seconds=300)
    after = json.loads(http("GET", f"{base}/healthz")[1])
    assert after["jobs_retried"] == before["jobs_retried"] + 1
    assert after["jobs_started"] == before["jobs_started"] + 2  # the first try, and the retry


def http_or_none(url: str) -> int | None:
    try:
        return http("GET", url)[0]
    except OSError:  # the proxy is between replicas
        return None
