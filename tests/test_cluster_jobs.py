"""`ray job submit` to a real two-node Ray cluster: a head and a second node started with `ray start` as separate
processes (their own ports and temp dirs), `geosane train` submitted with its working dir through Ray's Job SDK,
against a collection on the moto S3 endpoint. Needs Ray's dashboard (the `ray[default]` extra).

CI runs these in their own step (`pytest -m multinode`); they take a few minutes on two cores."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from geosane.collection import Collection, sources
from geosane.tokenizer import TokenizerConfig
from tests.helpers import free_port

pytestmark = pytest.mark.multinode

ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TOKEN = secrets.token_hex(32)
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def node_processes(marker: str) -> list[psutil.Process]:
    """The processes of one Ray node: those whose command line names its marker, and all their children."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            for member in [process, *process.children(recursive=True)]:
                found[member.pid] = member
    return list(found.values())


def stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def node_ports(first_worker_port: int) -> tuple[list[str], str]:
    """``ray start`` options giving one node ports of its own (two nodes share this machine), and the option that
    marks its processes (the raylet's command line names its node manager port)."""
    manager = free_port()
    options = [
        "--node-manager-port", str(manager),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--min-worker-port", str(first_worker_port),
        "--max-worker-port", str(first_worker_port + 199),
    ]  # fmt: skip
    return options, f"--node_manager_port={manager}"


@pytest.fixture
def two_nodes(s3_server: str) -> Iterator[dict[str, str]]:
    """A head (3 CPUs: a training worker, Ray Data and the job's driver) and a second node (2 CPUs) on this
    machine, each with its own ports and temp dir; both stopped, and only they, however the test ends."""
    temps = [tempfile.mkdtemp(prefix="ray", dir="/tmp") for _ in range(2)]  # short: socket paths < 108 bytes
    gcs, dashboard = free_port(), free_port()
    (head, head_marker), (node, node_marker) = node_ports(21000), node_ports(22000)
    # Ray 2.60 clusters authenticate with a token: the same one for both nodes and the job client (which reads it
    # once per process, so one token serves every cluster of this module)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **token}
    saved = {k: os.environ.get(k) for k in token}
    os.environ.update(token)
    common = ["--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    try:
        for command in (
            [RAY, "start", "--head", "--port", str(gcs), "--num-cpus", "3", "--temp-dir", temps[0], *head, *common]
            + ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)],
            [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "2", "--temp-dir", temps[1], *node, *common],
        ):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield {"dashboard": f"http://127.0.0.1:{dashboard}", "second_node": node_marker}
    finally:
        for marker in (node_marker, head_marker, f"--gcs_server_port={gcs}", *temps):
            stop(node_processes(marker))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_collection(bucket: str) -> str:
    url = f"{bucket}/collection"
    found = [sources.load(f"timm:{arch}?num_classes=10&seed={seed}") for arch in ("test_resnet",) for seed in range(4)]
    Collection(url).add(found, TokenizerConfig(token_size=230), progress=False)
    return url


def submit(cluster: dict[str, str], collection: str, storage: str, name: str, steps: int) -> tuple[object, str]:
    """``geosane train`` as a job: the tiny autoencoder, two workers placed on different nodes where they can be."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster["dashboard"])
    config = Path(tempfile.mkdtemp(prefix="geosane-job")) / "train.yaml"
    config.write_text(
        "model: tiny\nworkers: 2\nplacement: SPREAD\nzero_stage: 2\nbatch_size: 8\nlr: 0.002\n"
        "checkpoint_every: 10\neval_every: 10\nval_fraction: 0.25\n"
    )
    entrypoint = (
        f"{sys.executable} -m geosane.cli -q train --collection {collection} --storage {storage} --name {name} "
        f"--config {config} --steps {steps}"
    )
    job = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": str(ROOT),
            "excludes": [".venv", "out", "runs", "benchmarks/results", ".git"],
            "env_vars": {
                **{k: os.environ[k] for k in AWS},
                "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],  # set by conftest.py
            },
        },
    )
    return client, job


def wait(client, job: str, timeout: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status)
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout} s:\n{client.get_job_logs(job)[-3000:]}")


def test_geosane_train_submitted_to_two_nodes_runs_a_worker_on_each(
    two_nodes: dict[str, str], s3_collection: str, bucket: str
) -> None:
    import fsspec
    from ray.util.state import list_actors, list_nodes

    began = time.time()
    client, job = submit(two_nodes, s3_collection, f"{bucket}/runs", "two-nodes", steps=20)
    status = wait(client, job, timeout=600)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    print(f"\ntwo-node job finished in {time.time() - began:.0f} s")
    fs = fsspec.filesystem("s3")
    run = f"{bucket.removeprefix('s3://')}/runs/two-nodes"
    assert fs.exists(f"{run}/final/model.safetensors") and fs.exists(f"{run}/final/config.json")
    assert fs.glob(f"{run}/checkpoint_*"), "no checkpoint in storage"
    nodes = {n.node_id for n in list_nodes(address=two_nodes["dashboard"])}
    workers = list_actors(address=two_nodes["dashboard"], filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    assert len(nodes) == 2 and {w.node_id for w in workers} == nodes, "a training worker ran on each node"


def test_losing_a_node_mid_job_resumes_or_fails_clearly(
    two_nodes: dict[str, str], s3_collection: str, bucket: str
) -> None:
    import fsspec

    client, job = submit(two_nodes, s3_collection, f"{bucket}/runs", "lose-a-node", steps=200)
    fs = fsspec.filesystem("s3")
    run = f"{bucket.removeprefix('s3://')}/runs/lose-a-node"
    deadline = time.time() + 300
    while not fs.glob(f"{run}/checkpoint_*") and time.time() < deadline:
        time.sleep(2)
        fs.invalidate_cache()
    checkpoints = fs.glob(f"{run}/checkpoint_*")
    assert checkpoints, f"no checkpoint before the node was stopped:\n{client.get_job_logs(job)[-3000:]}"
    stop(node_processes(two_nodes["second_node"]))  # the second node goes, with the training worker on it
    status = wait(client, job, timeout=900)  # no hang: the job ends either way
    logs = client.get_job_logs(job)
    fs.invalidate_cache()
    after = fs.glob(f"{run}/checkpoint_*")
    assert after and max(after) >= max(checkpoints), f"checkpoints lost: {checkpoints} -> {after}"
    if status == "SUCCEEDED":  # resumed from its checkpoint with the workers on the node that is left
        final = json.loads(fs.cat(f"{run}/final/config.json"))
        assert final["info"]["step"] == 200, final["info"]
        print(f"\nafter losing a node the job resumed and finished ({len(after)} checkpoint(s) kept)")
    else:  # or it says what happened
        assert "geosane: error:" in logs or "died" in logs or "node" in logs.lower(), logs[-3000:]
        print(f"\nafter losing a node the job failed with: {logs.strip().splitlines()[-1]}")
