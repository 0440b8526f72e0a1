"""Generation on demand: one Ray Serve application that holds a trained autoencoder and answers generation requests
over HTTP, so that a team shares one service instead of each run loading everything afresh.

    POST /generate               the CLI's settings as JSON; checked at once (422 names the field), then queued
    GET  /jobs/{id}              state: queued, running, done or failed (with the error)
    GET  /jobs/{id}/{file}       model-<rank>.safetensors, model-<rank>.json (its card), job.json
    GET  /healthz                the autoencoder served and the service's counts

A job's id is a hash of everything its result depends on (autoencoder, its collection version, the settings and
the seed), so an identical request is answered from storage without recomputing. Results are written to
``storage/<id>/`` file by file under temporary names, ``job.json`` last: a job is done exactly when its
``job.json`` is there, so a replica killed mid-job loses no finished result and a retried job redoes only its own.
A replica keeps the fitted, encoded anchors of its last few generations (:class:`~geosane.generation.AnchorCache`):
a request that changes only the sampling, bandwidth or candidate count encodes nothing again. Ray exports the
service's metrics (:class:`Metrics`, and Ray Serve's own) to Prometheus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

from geosane import storage
from geosane.autoencoder.registry import DEFAULT
from geosane.config import option
from geosane.errors import GeoSANEError
from geosane.generation import AnchorCache, GenerateConfig

__all__ = [
    "REQUEST_FIELDS",
    "GenerationService",
    "Metrics",
    "ServeConfig",
    "application",
    "build_app",
    "parse_request",
    "resolved",
    "serve",
]

log = logging.getLogger(__name__)

#: What a request may set: the CLI's generation settings, less the server's own paths.
REQUEST_FIELDS = ("prompt", "task", "anchors", "sampling", "bandwidth", "candidates", "top_k", "data", "seed")
JOB = "job.json"


@dataclass(frozen=True)
class ServeConfig:
    """The service's settings (``geosane serve`` options)."""

    autoencoder: str = option(DEFAULT, "the autoencoder served: a run, its final/, or a shipped one", metavar="URL")
    storage: str = option("out/serve", "where finished jobs are written (a path or s3://)", metavar="URL")
    replicas: int = option(1, "replicas of the deployment")
    cpus_per_replica: float = option(1.0, "CPUs each replica reserves")
    gpus_per_replica: float = option(0.0, "GPUs each replica reserves")
    max_queue: int = option(8, "jobs queued or running per replica; more are refused with 429")
    max_candidates: int = option(16, "the most candidates one request may ask for")
    anchor_cache: int = option(4, "generations whose fitted, encoded anchors a replica keeps for the next requests")
    host: str = option("127.0.0.1", "address the HTTP proxy listens on (0.0.0.0 in a cluster)")
    port: int = option(8000, "HTTP port")


def request_error(field: str, reason: str) -> tuple[int, dict[str, Any]]:
    """A 422 answer naming the field and why."""
    return 422, {"error": "invalid request", "field": field, "reason": reason}


def parse_request(body: Any, max_candidates: int) -> GenerateConfig | tuple[int, dict[str, Any]]:
    """The request as checked settings, or the 422 answer that says which field is wrong and why.

    Args:
        body: the request's JSON.
        max_candidates: the most candidates the service allows.

    Returns:
        The settings, or (422, the answer).
    """
    if not isinstance(body, dict):
        return request_error("(body)", "expected a JSON object of generation settings")
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        return request_error(unknown[0], f"unknown field; known: {', '.join(REQUEST_FIELDS)}")
    if "prompt" not in body:
        return request_error("prompt", "required, e.g. timm:test_resnet?num_classes=10")
    defaults = {f.name: f.default for f in fields(GenerateConfig)}
    for name, value in body.items():
        expected = type(defaults[name]) if defaults[name] is not None else str
        if name == "prompt":
            expected = str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and defaults[name] is not None:
            return request_error(name, "must not be null")
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            return request_error(name, f"expected {expected.__name__}, got {type(value).__name__}")
        body = {**body, name: value}
    config = GenerateConfig(**body)
    try:
        config.validate()
    except GeoSANEError as exc:
        named = next((f for f in REQUEST_FIELDS if str(exc).startswith(f) or f" {f} " in str(exc)), "(settings)")
        return request_error(named, str(exc))
    if config.candidates > max_candidates:
        return request_error("candidates", f"at most {max_candidates} per request on this service")
    if not config.prompt.startswith("timm:"):
        return request_error("prompt", "expected timm:NAME[?in_chans=C&num_classes=K]")
    import timm

    if not timm.is_model(config.prompt[len("timm:") :].partition("?")[0]):
        return request_error("prompt", "not a timm architecture")
    return config


class Metrics:
    """The service's own Prometheus metrics, exported by Ray's metrics agent beside Ray Serve's (requests and
    latencies per route): requests by answer, generation jobs by outcome and their duration. Outside Ray (the
    service used in-process), nothing is recorded."""

    def __init__(self) -> None:
        import sys

        self.enabled = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if self.enabled:
            from ray.util.metrics import Counter, Histogram

            self.requests = Counter("geosane_requests", "generation requests, by HTTP answer", tag_keys=("status",))
            self.jobs = Counter("geosane_jobs", "generation jobs run, by outcome", tag_keys=("outcome",))
            self.seconds = Histogram(
                "geosane_job_seconds", "seconds a generation job took", boundaries=[1, 5, 15, 30, 60, 120, 300, 900]
            )

    def request(self, status: int) -> None:
        """One request answered with ``status``."""
        if self.enabled:
            self.requests.inc(tags={"status": str(status)})

    def job(self, outcome: str, seconds: float | None = None) -> None:
        """One job finished (``done``, with its duration) or ``failed``.

        Args:
            outcome: ``done`` or ``failed``.
            seconds: how long it took.
        """
        if self.enabled:
            self.jobs.inc(tags={"outcome": outcome})
            if seconds is not None:
                self.seconds.observe(seconds)


class GenerationService:
    """The service without HTTP: the autoencoder, a queue of jobs run one at a time, and the results in storage."""

    def __init__(self, config: ServeConfig) -> None:
        from geosane.autoencoder import Autoencoder
        from geosane.collection import Collection

        self.config = config
        self.autoencoder = Autoencoder.load(config.autoencoder)
        collection = self.autoencoder.info.get("collection")
        self.collection_version = Collection(collection).version if collection else None
        self.jobs: dict[str, dict[str, Any]] = {}  # this replica's queued, running and failed jobs
        self.anchors = AnchorCache(config.anchor_cache)  # a new seed or bandwidth reuses the encoded anchors
        self.counts = {"requests": 0, "cache_hits": 0, "jobs_run": 0, "rejected": 0, "anchor_cache_hits": 0}
        self.metrics = Metrics()
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one job at a time: it uses the replica's CPUs

    def job_id(self, config: GenerateConfig) -> str:
        """The hash of everything a result depends on: autoencoder, collection version, settings, seed."""
        key = {"autoencoder": self.config.autoencoder, "version": self.collection_version, **asdict(config)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self, job: str) -> str:
        """Where a job's results are written."""
        return storage.join(self.config.storage, job)

    def submit(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Check a request and queue it: 202 queued, 200 already done (from storage), 422 invalid, 429 queue full.

        Args:
            body: the request's JSON.

        Returns:
            HTTP status and the answer.
        """
        status, answer = self.answer(body)
        self.metrics.request(status)
        return status, answer

    def answer(self, body: Any) -> tuple[int, dict[str, Any]]:
        """:meth:`submit`'s answer."""
        with self.lock:
            self.counts["requests"] += 1
        parsed = parse_request(body, self.config.max_candidates)
        if isinstance(parsed, tuple):
            return parsed
        job = self.job_id(parsed)
        if storage.exists(storage.join(self.folder(job), JOB)):
            with self.lock:
                self.counts["cache_hits"] += 1
            return 200, {"id": job, **self.state(job), "cached": True}
        with self.lock:
            if job in self.jobs and self.jobs[job]["state"] in ("queued", "running"):
                return 202, {"id": job, **self.jobs[job]}
            busy = sum(j["state"] in ("queued", "running") for j in self.jobs.values())
            if busy >= self.config.max_queue:
                self.counts["rejected"] += 1
                return 429, {"error": f"the queue is full ({busy} jobs); retry later"}
            self.jobs[job] = {"state": "queued"}
        self.executor.submit(self.run, job, parsed)
        return 202, {"id": job, "state": "queued"}

    def run(self, job: str, config: GenerateConfig) -> None:
        """Generate, write every model and card, then ``job.json`` last (a failure is recorded, not raised).

        Args:
            job: the job's id.
            config: its settings.
        """
        from geosane.generation import generate, write_generated

        self.jobs[job] = {"state": "running"}
        try:
            settings = {k: v for k, v in asdict(config).items() if k != "prompt"}
            started = time.perf_counter()
            generated = generate(self.autoencoder, config.prompt, use_ray=False, cache=self.anchors, **settings)
            written = write_generated(generated, self.folder(job))
            stems = [posixpath.basename(w).removesuffix(".safetensors") for w in written]
            summary = {
                "state": "done",
                "files": [stem + ext for stem in stems for ext in (".safetensors", ".json", ".md")],
                "request": asdict(config),
                "autoencoder": self.config.autoencoder,
                "collection_version": self.collection_version,
            }
            storage.write_bytes(storage.join(self.folder(job), JOB), json.dumps(summary, indent=1).encode())
            with self.lock:
                self.counts["jobs_run"] += 1
                self.counts["anchor_cache_hits"] = self.anchors.hits
                self.jobs.pop(job, None)
            self.metrics.job("done", time.perf_counter() - started)
        except Exception as exc:  # the job fails, the service does not
            log.exception("job %s failed", job)
            self.jobs[job] = {"state": "failed", "error": storage.redact(str(exc))}
            self.metrics.job("failed")

    def state(self, job: str) -> dict[str, Any]:
        """A job's state: from storage when done, else from this replica."""
        done = storage.join(self.folder(job), JOB)
        if storage.exists(done):
            return json.loads(storage.read_bytes(done))
        return self.jobs.get(job, {"state": "unknown"})

    def read(self, job: str, name: str) -> bytes | None:
        """A finished job's file.

        Args:
            job: the job's id.
            name: a file its ``job.json`` lists, or ``job.json`` itself (nothing else is served).

        Returns:
            The bytes, or None.
        """
        state = self.state(job)
        if state.get("state") != "done" or (name != JOB and name not in state.get("files", [])):
            return None
        return storage.read_bytes(storage.join(self.folder(job), name))


def build_app(config: ServeConfig) -> Any:
    """The Ray Serve application: one deployment (``replicas`` of them) around :class:`GenerationService`."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    app = FastAPI(title="GeoSANE", description="weights generated on demand")

    @serve.deployment(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
    )
    @serve.ingress(app)
    class Generator:
        def __init__(self, settings: ServeConfig) -> None:
            self.service = GenerationService(settings)

        @app.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            return {"ok": True, "autoencoder": self.service.config.autoencoder, **self.service.counts}

        # annotations are strings here (postponed): FastAPI resolves them in this module, so routes name only
        # module-level types, and the body comes through Body() as plain JSON that parse_request checks itself
        @app.post("/generate", response_model=None)
        def generate(self, body: Any = Body(None)) -> JSONResponse:  # noqa: B008 (FastAPI's way to take a body)
            status, answer = self.service.submit(body)
            return JSONResponse(answer, status_code=status)

        @app.get("/jobs/{job}", response_model=None)
        def job(self, job: str) -> JSONResponse:
            state = self.service.state(job)
            return JSONResponse({"id": job, **state}, status_code=404 if state["state"] == "unknown" else 200)

        @app.get("/jobs/{job}/{name}", response_model=None)
        def file(self, job: str, name: str) -> Response:
            data = self.service.read(job, name)
            if data is None:
                return JSONResponse({"error": f"no file {name} of a finished job {job}"}, status_code=404)
            kind = "application/json" if name.endswith(".json") else "application/octet-stream"
            return Response(data, media_type=kind)

    return Generator.bind(config)  # type: ignore[attr-defined]


def application(args: dict[str, Any]) -> Any:
    """The application from a Serve config's ``args`` (a RayService's ``serveConfigV2``: ``import_path:
    geosane.serve:application``); the keys are :class:`ServeConfig` fields, unknown ones are errors.

    Args:
        args: settings, as the Serve config gives them.

    Returns:
        The bound application.
    """
    known = {f.name for f in fields(ServeConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise GeoSANEError(f"serve args: unknown {unknown}; known: {', '.join(sorted(known))}")
    return build_app(resolved(ServeConfig(**args)))


def resolved(config: ServeConfig) -> ServeConfig:
    """Local paths made absolute (replicas run in folders of their own), and the limits checked."""
    from dataclasses import replace

    from geosane.autoencoder.registry import is_shipped

    if config.replicas < 1 or config.max_queue < 1 or config.max_candidates < 1:
        raise GeoSANEError("replicas, max_queue and max_candidates must be >= 1")
    autoencoder = config.autoencoder if is_shipped(config.autoencoder) else storage.absolute(config.autoencoder)
    return replace(config, storage=storage.absolute(config.storage), autoencoder=autoencoder)


def serve(config: ServeConfig, blocking: bool = True) -> None:
    """Start the service on the Ray cluster of ``RAY_ADDRESS`` (or a local one) at ``host:port``.

    Args:
        config: the service's settings.
        blocking: wait until interrupted (the CLI), or return once it answers (tests).
    """
    import os

    import ray
    from ray import serve as ray_serve

    config = resolved(config)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    ray_serve.start(http_options={"host": config.host, "port": config.port})
    ray_serve.run(build_app(config), name="geosane", route_prefix="/", blocking=blocking)
