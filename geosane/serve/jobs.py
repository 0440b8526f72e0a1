"""The service's one job table: every replica submits to it, claims work from it and reads states from it, so that
any replica answers for any job, an identical request in flight joins the running job instead of starting another,
and a job whose replica dies is retried once, then reported as failed with its reason.

On Ray the table is a named, detached actor (:func:`job_table`), found by every replica of a service by the name its
storage gives it; in one process it is a plain object. Finished jobs are not kept here: a job is done exactly when
its ``job.json`` is in storage, which outlives every replica and the table itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

__all__ = ["HEARTBEAT_SECONDS", "STALE_SECONDS", "JobTable", "TableClient", "job_table"]

#: How often a replica says that it is alive, and after how long without a word its running job is taken back.
HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 15.0
#: How many times a job is started before a dying replica fails it for good.
MAX_TRIES = 2


class JobTable:
    """Queued, running and failed jobs of one service, with the counts that say what happened to them.

    Args:
        max_jobs: the most jobs queued or running at once; more are refused.
        stale_seconds: a running job whose replica has been silent this long is retried (or failed).
    """

    def __init__(self, max_jobs: int, stale_seconds: float = STALE_SECONDS) -> None:
        self.max_jobs = max_jobs
        self.stale_seconds = stale_seconds
        self.jobs: dict[str, dict[str, Any]] = {}  # id -> state, request, replica, tries, error
        self.order: list[str] = []  # queued ids, oldest first
        self.beats: dict[str, float] = {}  # replica -> when it last said it was alive
        self.counts = {"submitted": 0, "joined": 0, "started": 0, "retried": 0, "failed": 0, "refused": 0}
        self.lock = threading.Lock()  # in one process, request threads and the worker share the table

    def submit(self, job: str, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Queue ``job`` unless it is queued or running already (then the request joins it).

        Args:
            job: the job's id.
            request: what the job runs (generation settings, JSON-able).

        Returns:
            ``queued``, ``joined`` or ``full``, and the job's state.
        """
        with self.lock:
            self.reap()
            known = self.jobs.get(job)
            if known and known["state"] in ("queued", "running"):
                self.counts["joined"] += 1
                return "joined", public(known)
            busy = sum(j["state"] in ("queued", "running") for j in self.jobs.values())
            if busy >= self.max_jobs:
                self.counts["refused"] += 1
                return "full", {"state": "refused", "busy": busy}
            self.jobs[job] = {"state": "queued", "request": request, "tries": 0}
            self.order.append(job)
            self.counts["submitted"] += 1
            return "queued", public(self.jobs[job])

    def claim(self, replica: str) -> tuple[str, dict[str, Any]] | None:
        """The oldest queued job, now running on ``replica``; None when nothing waits.

        Args:
            replica: who runs it.

        Returns:
            The job's id and request, or None.
        """
        with self.lock:
            self.beats[replica] = time.monotonic()
            self.reap()
            while self.order:
                job = self.order.pop(0)
                entry = self.jobs.get(job)
                if entry and entry["state"] == "queued":
                    entry.update(state="running", replica=replica, tries=entry["tries"] + 1)
                    self.counts["started"] += 1
                    return job, entry["request"]
            return None

    def beat(self, replica: str) -> None:
        """``replica`` is alive (its running job is not stale)."""
        with self.lock:
            self.beats[replica] = time.monotonic()

    def finish(self, job: str, error: str | None = None) -> None:
        """A job ended: done (its ``job.json`` is in storage, so the table forgets it) or failed with ``error``.

        Args:
            job: the job's id.
            error: why it failed; None: it is done.
        """
        with self.lock:
            if error is None:
                self.jobs.pop(job, None)
            else:
                self.jobs[job] = {**self.jobs.get(job, {}), "state": "failed", "error": error}
                self.counts["failed"] += 1

    def state(self, job: str) -> dict[str, Any] | None:
        """A job's state as the table knows it (None: not queued, running or failed here)."""
        with self.lock:
            self.reap()
            entry = self.jobs.get(job)
            return public(entry) if entry else None

    def summary(self) -> dict[str, int]:
        """The counts, and how many jobs are queued and running now."""
        with self.lock:
            self.reap()
            states = [j["state"] for j in self.jobs.values()]
            return {**self.counts, "queued": states.count("queued"), "running": states.count("running")}

    def reap(self) -> None:
        """Take back the running jobs of replicas silent for ``stale_seconds``: queued again, or failed after
        :data:`MAX_TRIES` starts (the caller holds the lock)."""
        now = time.monotonic()
        for job, entry in self.jobs.items():
            if entry["state"] != "running" or now - self.beats.get(entry["replica"], now) < self.stale_seconds:
                continue
            if entry["tries"] < MAX_TRIES:
                entry.update(state="queued", replica=None)
                self.order.append(job)
                self.counts["retried"] += 1
            else:
                silent = now - self.beats[entry["replica"]]
                entry.update(
                    state="failed",
                    error=f"the replica running it stopped answering ({silent:.0f} s without a word), "
                    f"{entry['tries']} times; submit it again to retry",
                )
                self.counts["failed"] += 1


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """What a client sees of a job: its state, tries and error (not the request's resolved paths)."""
    return {k: entry[k] for k in ("state", "tries", "error") if k in entry}


class TableClient:
    """One way to call the table whether it is an object in this process or a Ray actor."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.remote = hasattr(table, "submit") and hasattr(table.submit, "remote")

    def __call__(self, method: str, *args: Any) -> Any:
        """``table.method(*args)``, waiting for the actor's answer on Ray.

        Args:
            method: a :class:`JobTable` method.
            *args: its arguments.

        Returns:
            What it returned.
        """
        if not self.remote:
            return getattr(self.table, method)(*args)
        import ray

        return ray.get(getattr(self.table, method).remote(*args))

    def tell(self, method: str, *args: Any) -> None:
        """``table.method(*args)`` without waiting for an answer (heartbeats).

        Args:
            method: a :class:`JobTable` method.
            *args: its arguments.
        """
        if self.remote:
            getattr(self.table, method).remote(*args)
        else:
            getattr(self.table, method)(*args)


def job_table(storage: str, max_jobs: int) -> Any:
    """The job table of the service that writes to ``storage``: in a Ray worker, the named detached actor that all
    its replicas share (created by the first, found by the others, alive after any of them dies); elsewhere, a
    table of this process.

    Args:
        storage: the service's storage URL (names the table: two services never share one).
        max_jobs: the most jobs queued or running at once.

    Returns:
        A :class:`JobTable` or an actor handle to one.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return JobTable(max_jobs)
    name = "geosane-jobs-" + hashlib.sha256(storage.encode()).hexdigest()[:16]
    actor = ray.remote(num_cpus=0, max_concurrency=1)(JobTable)
    return actor.options(name=name, namespace="geosane", lifetime="detached", get_if_exists=True).remote(max_jobs)
