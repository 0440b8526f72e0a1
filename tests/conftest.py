"""Shared fixtures: the real data root, and a real S3 endpoint (moto's server) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geosane.train import extensions_dir

from .helpers import free_port

SHARED = Path(__file__).resolve().parents[2] / "shared"
# DeepSpeed's async_io op (minutes to build) is cached per environment, for every test, subprocess and Ray worker
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the project: the real weights and data these tests run on (never copied into the
    repository). Elsewhere they skip and say why; under CI (``$CI`` set) a missing ``../shared`` fails them."""
    root = Path(os.environ.get("GEOSANE_SHARED", SHARED))
    if not (root / "weights").is_dir() or not (root / "data").is_dir():
        reason = (
            f"needs the real weights and data of ../shared (see ../shared/data/README.md), not found under "
            f"{root}; set GEOSANE_SHARED to their folder"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run every test: {reason}")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session per test module (``ray.init`` costs seconds): two CPUs, Ray's own logs off."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1, reached through the standard AWS environment variables."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A fresh bucket on the moto server; returns its ``s3://`` URL."""
    import boto3

    name = "geosane-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
