"""The service's one job table: identical requests join the job in flight, the queue is bounded, and the job of a
replica that stopped answering is retried once, then failed with its reason."""

from __future__ import annotations

import time

from geosane.serve.jobs import JobTable

REQUEST = {"prompt": "timm:test_resnet"}


def test_an_identical_request_joins_the_job_in_flight_and_the_queue_is_bounded() -> None:
    table = JobTable(max_jobs=2)
    assert table.submit("a" * 16, REQUEST)[0] == "queued"
    assert table.submit("a" * 16, REQUEST)[0] == "joined"
    assert table.claim("replica-1") == ("a" * 16, REQUEST)
    assert table.submit("a" * 16, REQUEST)[0] == "joined"  # running: still joined, never started twice
    assert table.claim("replica-2") is None
    assert table.submit("b" * 16, REQUEST)[0] == "queued"
    assert table.submit("c" * 16, REQUEST)[0] == "full"
    summary = table.summary()
    assert summary["started"] == 1 and summary["joined"] == 2 and summary["running"] == 1 and summary["queued"] == 1


def test_a_job_is_claimed_once_oldest_first_and_forgotten_when_done() -> None:
    table = JobTable(max_jobs=4)
    for job in ("1" * 16, "2" * 16):
        table.submit(job, {"job": job})
    assert table.claim("r")[0] == "1" * 16 and table.claim("s")[0] == "2" * 16 and table.claim("r") is None
    table.finish("1" * 16)
    table.finish("2" * 16, "out of memory")
    assert table.state("1" * 16) is None  # done: storage says so, not the table
    assert table.state("2" * 16) == {"state": "failed", "tries": 1, "error": "out of memory"}
    assert table.submit("2" * 16, {})[0] == "queued"  # a failed job asked again runs again


def test_the_job_of_a_silent_replica_is_retried_once_then_failed_with_its_reason() -> None:
    table = JobTable(max_jobs=4, stale_seconds=0.05)
    table.submit("a" * 16, REQUEST)
    assert table.claim("dead")[0] == "a" * 16
    time.sleep(0.1)
    assert table.state("a" * 16)["state"] == "queued"  # taken back from the silent replica
    assert table.claim("also-dead")[0] == "a" * 16
    table.beat("alive")
    assert table.state("a" * 16)["state"] == "running"  # another replica's beat does not keep it alive
    time.sleep(0.1)
    state = table.state("a" * 16)
    assert state["state"] == "failed" and "stopped answering" in state["error"] and state["tries"] == 2
    assert table.summary()["retried"] == 1 and table.summary()["failed"] == 1


def test_a_beating_replica_keeps_its_job() -> None:
    table = JobTable(max_jobs=1, stale_seconds=0.2)
    table.submit("a" * 16, REQUEST)
    table.claim("alive")
    for _ in range(5):
        time.sleep(0.08)
        table.beat("alive")
    assert table.state("a" * 16)["state"] == "running" and table.summary()["retried"] == 0
