"""fsspec URLs with atomic writes and clear errors, for local paths, ``file://`` and ``s3://`` alike.

S3 settings come from the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server), so every stage, Ray Data and pyarrow included, reads
the same configuration. Credentials never appear in messages: errors name the URL and the endpoint only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from geosane.errors import GeoSANEError

__all__ = [
    "RedactingFilter",
    "absolute",
    "atomic_open",
    "check_endpoint",
    "ensure_bucket",
    "errors_named",
    "exists",
    "holder",
    "filesystem",
    "is_dir",
    "join",
    "within",
    "object_store_options",
    "read_bytes",
    "redact",
    "refuse_output_inside",
    "remove",
    "sha256",
    "storage_options",
    "tokens_sha256",
    "write_bytes",
]

#: Fail fast on an unreachable endpoint instead of retrying for minutes.
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 120, "retries": {"max_attempts": 3, "mode": "standard"}}


def storage_options(url: str) -> dict:
    """Options for the filesystem behind ``url``."""
    if url.startswith(("s3://", "s3a://")):
        options: dict = {"config_kwargs": S3_CONFIG}
        check_endpoint()
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    return {}


def endpoint_description(url: str) -> str:
    """Where ``url`` lives, for error messages (never credentials)."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return f"{url} (endpoint {redact(endpoint)})"
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


def holder(url: str) -> str | None:
    """What a local path lies inside that no output may be written into: a collection (a folder holding
    ``models.lance``, or the table itself) or an autoencoder run (``split.json`` or ``final/config.json``), named; None
    for anything else, and for URLs with a scheme (their protected roots are checked by :func:`within`)."""
    if "://" in url:
        return None
    path = Path(url).resolve()
    for folder in (path, *path.parents):
        if (folder / "models.lance").is_dir() or folder.suffix == ".lance":
            return f"the collection {folder.parent if folder.suffix == '.lance' else folder}"
        if (folder / "split.json").is_file() or (folder / "final" / "config.json").is_file():
            return f"the autoencoder run {folder}"
    return None


def refuse_output_inside(out: str, *roots: str | None, flag: str = "--out") -> None:
    """Refuse an output folder inside a collection or a run (those named, and any local one found above ``out``):
    the rule ``collection export`` follows, for every verb that writes.

    Args:
        out: where a verb would write.
        *roots: collections and runs it reads (None: none).
        flag: the option that named ``out``, for the message.

    Raises:
        GeoSANEError: naming the collection or run ``out`` lies in.
    """
    for root in filter(None, roots):
        if within(absolute(out), absolute(root)):
            raise GeoSANEError(f"{flag} {out} is inside {root}; write elsewhere")
    inside = holder(out)
    if inside:
        raise GeoSANEError(f"{flag} {out} is inside {inside}; write elsewhere")


def within(url: str, root: str) -> bool:
    """Whether ``url`` is ``root`` or lies under it (whatever mix of plain paths and ``file://`` names the two).

    Args:
        url: a path or URL.
        root: a folder path or URL.

    Returns:
        True when ``url`` is inside ``root``.
    """

    def canonical(u: str) -> str:
        fs, path = filesystem(absolute(u))
        return fs.unstrip_protocol(posixpath.normpath(path)).rstrip("/")

    inner, outer = canonical(url), canonical(root)
    return inner == outer or inner.startswith(outer + "/")


def join(url: str, *parts: str) -> str:
    """``url`` with path components appended, keeping its scheme.

    Args:
        url: a path or URL.
        *parts: components to append.

    Returns:
        The joined URL.
    """
    return posixpath.join(url.rstrip("/"), *parts)


@contextlib.contextmanager
def errors_named(url: str, action: str) -> Iterator[None]:
    """Turn low-level storage failures into a GeoSANEError that says what failed where.

    Args:
        url: where (credentials are never shown).
        action: what was being done.

    Returns:
        A context manager.
    """
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
            raise GeoSANEError(f"cannot {action} {endpoint_description(url)}: {redact(detail)}") from exc
        raise


def exists(url: str) -> bool:
    """Whether anything is at ``url``."""
    with errors_named(url, "check"):
        fs, path = filesystem(url)
        return fs.exists(path)


def is_dir(url: str) -> bool:
    """Whether ``url`` is a folder."""
    with errors_named(url, "check"):
        fs, path = filesystem(url)
        return fs.isdir(path)


def read_bytes(url: str) -> bytes:
    """A file's bytes; a missing file is a GeoSANEError naming it."""
    with errors_named(url, "read"):
        fs, path = filesystem(url)
        return fs.cat_file(path)


@contextlib.contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for writing under a temporary name; move it into place only if the block succeeds.

    Readers never see a half-written file: they see the old file, or the new one complete.
    """
    with errors_named(url, "write"):
        ensure_bucket(url)  # s3fs would create a missing bucket; only `collect --create-bucket` may
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
    """Write ``data`` to ``url`` under a temporary name, then move it into place (a reader never sees half a file).

    Args:
        url: a path or URL.
        data: the bytes.
    """
    with atomic_open(url) as handle:
        handle.write(data)


def upload(folder: str | Path, url: str) -> None:
    """Copy a local folder's files to ``url`` (any fsspec URL; a local path too)."""
    with errors_named(url, "write"):
        ensure_bucket(url)
        fs, path = filesystem(url)
        fs.put(str(folder).rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)


def remove(url: str) -> None:
    """Delete ``url`` if it exists (used to clean up after a failed write)."""
    with contextlib.suppress(Exception):
        fs, path = filesystem(url)
        if fs.exists(path):
            fs.rm(path)


def object_store_options(url: str) -> dict[str, str] | None:
    """The same S3 settings for Lance's object store (which reads the credentials from the environment itself)."""
    if not url.startswith(("s3://", "s3a://")):
        return None
    options = {"aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["aws_endpoint"] = endpoint
        options["allow_http"] = str(endpoint.startswith("http://")).lower()
    return options


def ensure_bucket(url: str, create: bool = False) -> None:
    """An ``s3://`` URL's bucket must exist: a typo is an error, not a new bucket, unless ``create`` is asked for.

    Args:
        url: a collection or run URL.
        create: create a missing bucket.

    Raises:
        GeoSANEError: the bucket does not exist (or cannot be reached).
    """
    if not url.startswith(("s3://", "s3a://")):
        return
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    with errors_named(f"s3://{bucket}", "check"):
        fs, _ = filesystem(url)
        if fs.exists(bucket):
            return
        if not create:
            raise GeoSANEError(
                f"cannot write {endpoint_description(url)}: bucket {bucket} does not exist; "
                "create it, or pass --create-bucket"
            )
        fs.mkdir(bucket)


#: ``scheme://user:password@host``: the user information of a URL
USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` without credentials: user information in URLs, and the values of the credential variables."""
    text = USERINFO.sub(r"\g<scheme>***@", text)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def check_endpoint() -> None:
    """Refuse an endpoint variable that carries credentials (``http://user:secret@host``): every AWS client would
    send them in the URL as well as in its signature (servers refuse the pair), and log them at debug level.

    Raises:
        GeoSANEError: naming the variable, with the credentials masked, and where to put them instead.
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "")
        if USERINFO.search(value):
            raise GeoSANEError(
                f"{name}={redact(value)} carries credentials: give the endpoint without them and put the key in "
                "AWS_ACCESS_KEY_ID and the secret in AWS_SECRET_ACCESS_KEY"
            )


class RedactingFilter(logging.Filter):
    """Masks credentials (:func:`redact`) in every log record it sees, the AWS clients' debug lines included."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message if it holds a credential; never drops a record."""
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def sha256(*parts: Any) -> str:
    """The SHA-256 of text (as UTF-8), bytes and arrays (their raw bytes), in order: how stored parts are checked."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else np.ascontiguousarray(part).data)
    return digest.hexdigest()


def tokens_sha256(tokens: np.ndarray, valid: np.ndarray, positions: np.ndarray) -> str:
    """The hash of a model's token arrays as a collection stores them (float32 values, int32 counts and positions).

    Args:
        tokens: flat token values.
        valid: real values per token.
        positions: flat positions.

    Returns:
        The hex digest.
    """
    return sha256(tokens.astype(np.float32, copy=False), valid.astype(np.int32), positions.astype(np.int32))
