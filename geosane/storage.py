"""fsspec URLs with atomic writes and clear errors, for local paths, ``file://`` and ``s3://`` alike.

S3 settings come from the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server), so every stage, Ray Data and pyarrow included, reads
the same configuration. Credentials never appear in messages: errors name the URL and the endpoint only.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import IO, Iterator

import fsspec
from fsspec.core import url_to_fs

from geosane.errors import GeoSANEError

__all__ = [
    "absolute",
    "atomic_open",
    "errors_named",
    "exists",
    "filesystem",
    "join",
    "read_bytes",
    "remove",
    "storage_options",
    "write_bytes",
]

#: Fail fast on an unreachable endpoint instead of retrying for minutes.
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 120, "retries": {"max_attempts": 3, "mode": "standard"}}


def storage_options(url: str) -> dict:
    """Options for the filesystem behind ``url``."""
    if url.startswith(("s3://", "s3a://")):
        options: dict = {"config_kwargs": S3_CONFIG}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    return {}


def endpoint_description(url: str) -> str:
    """Where ``url`` lives, for error messages (never credentials)."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return f"{url} (endpoint {endpoint})"
    return url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path for ``url`` (a plain path means the local disk)."""
    try:
        fs, path = url_to_fs(url, **storage_options(url))
    except (ImportError, ValueError) as exc:
        raise GeoSANEError(f"cannot open {url}: {exc}") from exc
    # url_to_fs collapses cached instances; forget stale listings so we always see other writers' files.
    fs.invalidate_cache()
    return fs, path


def absolute(url: str) -> str:
    """A local path made absolute (Ray workers run in folders of their own); a URL with a scheme as it is."""
    return url if "://" in url else str(Path(url).resolve())


def join(url: str, *parts: str) -> str:
    """``url`` with path components appended, keeping its scheme."""
    return posixpath.join(url.rstrip("/"), *parts)


@contextlib.contextmanager
def errors_named(url: str, action: str) -> Iterator[None]:
    """Turn low-level storage failures into a GeoSANEError that says what failed where."""
    try:
        yield
    except GeoSANEError:
        raise
    except FileNotFoundError as exc:
        raise GeoSANEError(f"cannot {action} {url}: not found") from exc
    except PermissionError as exc:
        raise GeoSANEError(f"cannot {action} {url}: permission denied") from exc
    except Exception as exc:  # botocore/aiohttp/OS errors carry no common base class
        module = type(exc).__module__
        if isinstance(exc, OSError) or module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs")):
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GeoSANEError(f"cannot {action} {endpoint_description(url)}: {detail}") from exc
        raise


def exists(url: str) -> bool:
    with errors_named(url, "check"):
        fs, path = filesystem(url)
        return fs.exists(path)


def read_bytes(url: str) -> bytes:
    with errors_named(url, "read"):
        fs, path = filesystem(url)
        return fs.cat_file(path)


@contextlib.contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for writing under a temporary name; move it into place only if the block succeeds.

    Readers never see a half-written file: they see the old file, or the new one complete.
    """
    with errors_named(url, "write"):
        fs, path = filesystem(url)
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        handle = fs.open(temporary, "wb")
        try:
            yield handle
            handle.close()
            fs.mv(temporary, path)
        except BaseException:
            with contextlib.suppress(Exception):
                handle.close()
            with contextlib.suppress(Exception):
                fs.rm(temporary)
            raise


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url) as handle:
        handle.write(data)


def remove(url: str) -> None:
    """Delete ``url`` if it exists (used to clean up after a failed write)."""
    with contextlib.suppress(Exception):
        fs, path = filesystem(url)
        if fs.exists(path):
            fs.rm(path)
