"""The service without HTTP: the autoencoder, the shared job table, this replica's worker, and results in storage
checked against their hashes whenever they are served."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any

from geosane import storage
from geosane.errors import GeoSANEError
from geosane.generation import AnchorCache, GenerateConfig
from geosane.serve.config import ServeConfig
from geosane.serve.jobs import HEARTBEAT_SECONDS, TableClient, job_table
from geosane.serve.requests import JOB_ID, admitted

__all__ = ["JOB", "DamagedResult", "GenerationService", "Metrics"]

log = logging.getLogger(__name__)

JOB = "job.json"
#: How long an idle replica waits before it asks the job table for work again.
IDLE_SECONDS = 0.5


class Metrics:
    """The service's one record of what happened on this replica: counts (``/healthz`` shows them) and, where Ray
    runs the service, the same as Prometheus metrics exported by Ray's metrics agent beside Ray Serve's own:
    requests by answer, generation jobs by outcome and their duration, and reuses of encoded anchors."""

    #: The counts, in the order ``/healthz`` shows them.
    COUNTS = (
        "requests",
        "cache_hits",
        "rejected",
        "invalid",
        "anchor_cache_hits",
        "replica_jobs_done",
        "replica_jobs_failed",
    )

    def __init__(self) -> None:
        import sys

        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.lock = threading.Lock()
        self.enabled = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if self.enabled:
            from ray.util.metrics import Counter, Histogram

            self.requests = Counter("geosane_requests", "generation requests, by HTTP answer", tag_keys=("status",))
            self.jobs = Counter("geosane_jobs", "generation jobs run, by outcome", tag_keys=("outcome",))
            self.seconds = Histogram(
                "geosane_job_seconds", "seconds a generation job took", boundaries=[1, 5, 15, 30, 60, 120, 300, 900]
            )

    def count(self, name: str) -> None:
        """One more of ``name`` (one of :data:`COUNTS`)."""
        with self.lock:
            self.counts[name] += 1

    def request(self, status: int, cached: bool = False) -> None:
        """One request answered with ``status`` (``cached``: from storage).

        Args:
            status: the HTTP status.
            cached: answered from a finished job in storage.
        """
        self.count("requests")
        if cached:
            self.count("cache_hits")
        if status == 429:
            self.count("rejected")
        if status == 422:
            self.count("invalid")
        if self.enabled:
            self.requests.inc(tags={"status": str(status)})

    def job(self, outcome: str, seconds: float | None = None, anchors_reused: bool = False) -> None:
        """One job finished (``done``, with its duration) or ``failed``.

        Args:
            outcome: ``done`` or ``failed``.
            seconds: how long it took.
            anchors_reused: its fitted, encoded anchors came from the anchor cache.
        """
        self.count(f"replica_jobs_{outcome}")
        if anchors_reused:
            self.count("anchor_cache_hits")
        if self.enabled:
            self.jobs.inc(tags={"outcome": outcome})
            if seconds is not None:
                self.seconds.observe(seconds)

    def snapshot(self) -> dict[str, int]:
        """The counts now."""
        with self.lock:
            return dict(self.counts)


class DamagedResult(GeoSANEError):
    """A finished job's file in storage no longer matches the hash its ``job.json`` (or its card) records."""


class GenerationService:
    """The service without HTTP: the autoencoder, the service's one job table (shared by every replica), a worker
    that runs this replica's share of the jobs one at a time, and the results in storage."""

    def __init__(self, config: ServeConfig, table: Any = None) -> None:
        from geosane.autoencoder import Autoencoder
        from geosane.collection import Collection

        self.config = config
        self.autoencoder = Autoencoder.load(config.autoencoder)
        self.autoencoder.info.setdefault("url", config.autoencoder)
        collection = self.autoencoder.anchors
        self.collection_version = Collection(collection).version if collection else None
        self.anchors: AnchorCache = AnchorCache(config.anchor_cache)  # a new seed or bandwidth reuses them encoded
        self.metrics = Metrics()
        self.replica = uuid.uuid4().hex[:12]
        self.table = TableClient(
            table if table is not None else job_table(config.storage, config.max_queue * config.replicas)
        )
        self.stopped = threading.Event()
        for loop in (self.work, self.heartbeat):  # one job at a time: it uses the replica's CPUs
            threading.Thread(target=loop, name=f"geosane-{loop.__name__}", daemon=True).start()

    def close(self) -> None:
        """Stop this replica's worker and heartbeat (a job it runs finishes first)."""
        self.stopped.set()

    def job_id(self, config: GenerateConfig) -> str:
        """The hash of everything a result depends on: autoencoder, collection version, settings, seed."""
        key = {"autoencoder": self.config.autoencoder, "version": self.collection_version, **asdict(config)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self, job: str) -> str:
        """Where a job's results are written; only an id of the service's own form is ever joined to the storage."""
        if not JOB_ID.fullmatch(job):
            raise GeoSANEError(f"{job!r} is not a job id")
        return storage.join(self.config.storage, job)

    def submit(self, request: GenerateConfig) -> tuple[int, dict[str, Any]]:
        """Hold a request (valid settings) to what the service offers and queue it: 202 queued (or joined to the
        same job in flight), 200 already done (from storage), 422 not offered here, 429 queue full.

        Args:
            request: the request's settings.

        Returns:
            HTTP status and the answer.
        """
        status, answer = self.answer(request)
        self.metrics.request(status, cached=bool(answer.get("cached")))
        return status, answer

    def answer(self, request: GenerateConfig) -> tuple[int, dict[str, Any]]:
        """:meth:`submit`'s answer."""
        settings = admitted(request, self.config)
        if isinstance(settings, tuple):
            return settings
        job = self.job_id(settings)
        if storage.exists(storage.join(self.folder(job), JOB)):
            return 200, {"id": job, **self.state(job), "cached": True}
        outcome, state = self.table("submit", job, asdict(settings))
        if outcome == "full":
            return 429, {"error": f"the queue is full ({state['busy']} jobs); retry later"}
        return 202, {"id": job, **state}

    def work(self) -> None:
        """This replica's worker: claim the oldest queued job of the table, run it, say how it ended; again."""
        while not self.stopped.is_set():
            claimed = self.table("claim", self.replica)
            if claimed is None:
                self.stopped.wait(IDLE_SECONDS)
                continue
            job, request = claimed
            self.table("finish", job, self.run(job, GenerateConfig(**request)))

    def heartbeat(self) -> None:
        """Tell the table that this replica is alive, so that its running job is not taken back."""
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            self.table.tell("beat", self.replica)

    def run(self, job: str, config: GenerateConfig) -> str | None:
        """Generate, write every model and card, then ``job.json`` last, with the SHA-256 of every file it lists.

        Args:
            job: the job's id.
            config: its settings.

        Returns:
            None when done, else why it failed (the job fails, the service does not).
        """
        from geosane.generation import Generator, write_generated

        try:
            started = time.perf_counter()
            generator = Generator(config, self.autoencoder, cache=self.anchors)
            generated = generator.generate(use_ray=False)
            written = write_generated(generated, self.folder(job))
            stems = [posixpath.basename(w).removesuffix(".safetensors") for w in written]
            files = [stem + ext for stem in stems for ext in (".safetensors", ".json", ".md")]
            hashes = {f: storage.sha256(storage.read_bytes(storage.join(self.folder(job), f))) for f in files}
            summary = {
                "state": "done",
                "files": files,
                "sha256": hashes,
                "request": asdict(config),
                "autoencoder": self.config.autoencoder,
                "collection_version": self.collection_version,
            }
            storage.write_bytes(storage.join(self.folder(job), JOB), json.dumps(summary, indent=1).encode())
            self.metrics.job("done", time.perf_counter() - started, anchors_reused=generator.cache_hit)
            return None
        except Exception as exc:
            log.exception("job %s failed", job)
            self.metrics.job("failed")
            return storage.redact(str(exc)) or type(exc).__name__

    def state(self, job: str) -> dict[str, Any]:
        """A job's state: from storage when done, else from the service's job table (``unknown`` for an id the
        service never made)."""
        if not JOB_ID.fullmatch(job):
            return {"state": "unknown"}
        done = storage.join(self.folder(job), JOB)
        if storage.exists(done):
            try:
                summary = json.loads(storage.read_bytes(done))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DamagedResult(f"job {job}: {JOB} is damaged ({exc})") from None
            if (
                not isinstance(summary, dict)
                or summary.get("state") != "done"
                or not isinstance(summary.get("sha256"), dict)
            ):
                raise DamagedResult(f"job {job}: {JOB} is not a finished job's record (no hashes of its files)")
            return summary
        return self.table("state", job) or {"state": "unknown"}

    def summary(self) -> dict[str, Any]:
        """This replica's counts and the service's job counts (from the shared table)."""
        return {**self.metrics.snapshot(), **{f"jobs_{k}": v for k, v in self.table("summary").items()}}

    def read(self, job: str, name: str) -> bytes | None:
        """A finished job's file, checked against the SHA-256 its ``job.json`` records (and, for weights, their
        card's ``weights_sha256``).

        Args:
            job: the job's id.
            name: a file its ``job.json`` lists, or ``job.json`` itself (nothing else is served).

        Returns:
            The bytes, or None (no such job or file).

        Raises:
            DamagedResult: the file differs from what was written, named with its job.
        """
        state = self.state(job)
        if state.get("state") != "done":
            return None
        if name == JOB:
            return json.dumps(state, indent=1).encode()
        if name not in state.get("files", []):
            return None
        data = self.checked(job, name, state["sha256"].get(name))
        if name.endswith(".safetensors"):
            card = json.loads(self.checked(job, name.removesuffix(".safetensors") + ".json", None, state))
            if card.get("weights_sha256") != storage.sha256(data):
                raise DamagedResult(f"job {job}: {name} does not match the weights_sha256 of its card")
        return data

    def checked(self, job: str, name: str, expected: str | None, state: dict[str, Any] | None = None) -> bytes:
        """A job's file, read and compared with its recorded hash.

        Args:
            job: the job's id.
            name: the file.
            expected: its SHA-256 (None: ``state``'s record of it).
            state: the job's ``job.json``.

        Returns:
            The bytes.

        Raises:
            DamagedResult: missing, or not the bytes that were written.
        """
        expected = expected or (state or {}).get("sha256", {}).get(name)
        url = storage.join(self.folder(job), name)
        try:
            data = storage.read_bytes(url)
        except GeoSANEError:
            raise DamagedResult(f"job {job}: {name} is missing from storage") from None
        found = storage.sha256(data)
        if found != expected:
            raise DamagedResult(
                f"job {job}: {name} is damaged: SHA-256 {found[:16]}... differs from {str(expected)[:16]}... "
                f"recorded in {JOB}"
            )
        return data
