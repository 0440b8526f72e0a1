"""Checking what a collection holds: every data file and model read back against its hashes, and damage named.

A damaged data file is traced to the models it holds (through their ids, or, where the ids are damaged too, through
the commit message of the commit that wrote the file), so every message names the file and the models. Each
function takes the :class:`~geosane.collection.Collection` it checks (which calls them: they do not import it).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from geosane import storage
from geosane.collection.rows import COMMIT_MESSAGE, IDS_FOLLOW
from geosane.errors import GeoSANEError

log = logging.getLogger(__name__)

__all__ = [
    "bad_fragment",
    "check_latest",
    "data_files",
    "mismatch",
    "named",
    "newest_committed",
    "newest_damaged",
    "open_table",
    "native_output_captured",
    "read_apart",
    "readable_versions",
    "unreadable",
    "verify",
]


@contextmanager
def named(collection: Any, action: str, model: str = "", files: list[str] | None = None) -> Iterator[None]:
    """Any failure inside becomes a GeoSANEError naming the collection, the model and its data files.

    Args:
        collection: the collection being read or written.
        action: what is being done (``open``, ``read``, ``commit``...).
        model: the model concerned, if one.
        files: its data files, if known.

    Returns:
        A context manager.
    """
    try:
        with storage.errors_named(collection.table_url, action):
            yield
    except GeoSANEError:
        raise
    except Exception as exc:  # Lance raises OSError/ValueError/RuntimeError with Rust detail
        where = f" model {model}" if model else ""
        in_files = f" (data file {', '.join(files)})" if files else ""
        detail = storage.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise GeoSANEError(f"cannot {action} {collection.url}:{where}{in_files}: {detail}") from exc


@contextmanager
def native_output_captured() -> Iterator[None]:
    """Native libraries' own writes to the terminal (a Rust panic prints its message and backtrace on file descriptor
    2 before Lance raises) go to the debug log instead; Python's exception carries what matters."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("native output while reading: %s", storage.redact(text))


def read_apart(
    collection: Any, dataset: Any, scan: Callable[[list[Any]], Any], fragments: list[Any] | None, error: Exception
) -> tuple[Any, list[str]]:
    """After a read of many data files failed: read them one by one, leave the damaged ones out (each named with its
    models, in a warning), and return what the others hold.

    Args:
        collection: the collection.
        dataset: its Lance dataset.
        scan: the read, of a list of fragments.
        fragments: the fragments the read was of (None: all).
        error: what the read of all of them raised.

    Returns:
        The rows of the readable files, and one message per damaged file.

    Raises:
        GeoSANEError: no file could be read.
    """
    import pyarrow as pa

    parts, damaged = [], []
    for fragment in dataset.get_fragments() if fragments is None else fragments:
        try:
            parts.append(scan([fragment]))
        except Exception as exc:
            detail = storage.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            damaged.append(bad_fragment(collection, fragment, detail))
    if not parts:
        raise GeoSANEError(unreadable(collection, dataset, error)) from error
    for message in damaged:
        log.warning("%s", message)
    return pa.concat_tables(parts), damaged


def open_table(collection: Any, version: int | None) -> Any:
    """Lance's dataset at ``version`` (None: the newest), with the errors a user can act on: no such version, or a
    newest manifest that is damaged (named with the versions that still read). A damaged manifest can make Lance's
    Rust code panic, which prints a backtrace itself (kept off the terminal) and raises a BaseException.

    Args:
        collection: the collection.
        version: the version to open.

    Returns:
        The dataset.

    Raises:
        GeoSANEError: no such version, or the newest cannot be read.
    """
    import lance

    try:
        with native_output_captured():
            dataset = lance.dataset(
                collection.table_url,
                version=version,
                storage_options=storage.object_store_options(collection.table_url),
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (a Rust panic is a BaseException)
        if version is not None and "not found" in str(exc).lower():
            raise GeoSANEError(f"{collection.url}: no version {version} (see `geosane collection versions`)") from exc
        if version is None and (type(exc).__name__ == "PanicException" or isinstance(exc, (OSError, ValueError))):
            raise GeoSANEError(newest_damaged(collection, exc)) from None
        raise
    if dataset.version < 1:  # versions count from 1: a zeroed manifest reads as an empty version 0
        raise GeoSANEError(newest_damaged(collection, ValueError("its manifest reads as version 0")))
    return dataset


def check_latest(collection: Any, dataset: Any) -> None:
    """Refuse a collection whose newest version cannot be opened: Lance falls back to the newest manifest it finds,
    so a lost manifest would silently roll the collection back. The newest version is named by
    ``latest_version_hint.json`` and by the transaction files (Lance writes each, named by the version it read,
    before its manifest), so a manifest lost with its hint (an incomplete copy) is found too.

    Args:
        collection: the collection.
        dataset: the Lance dataset as opened (at its latest readable version).

    Raises:
        GeoSANEError: a newer version is named but cannot be opened, with the versions that can.
    """
    import lance

    hint = storage.join(collection.table_url, "_versions", "latest_version_hint.json")
    named: list[tuple[int, str]] = []
    try:
        named.append((int(json.loads(storage.read_bytes(hint))["version"]), hint))
    except Exception:  # no hint (older Lance, object stores that do not write one): the transactions still tell
        pass
    committed = newest_committed(collection)
    if committed:
        named.append(committed)
    if not named or max(named)[0] <= dataset.version:
        return
    newest, source = max(named)
    options = storage.object_store_options(collection.table_url)
    for attempt in range(6):  # a writer may be between its transaction file and its manifest: give it a moment
        try:  # another writer may have committed since the dataset was opened: then the newer version opens
            lance.dataset(collection.table_url, version=newest, storage_options=options)
            return
        except Exception:
            if source == hint or attempt == 5:
                break
            time.sleep(0.5)
    readable = ", ".join(map(str, readable_versions(collection)))
    where = (
        f"named by {source}"
        if source == hint
        else f"begun by {source}; if a writer died mid-commit, nothing was lost and removing that file lets you go on"
    )
    raise GeoSANEError(
        f"{collection.url}: version {newest} cannot be opened ({where}): its manifest is missing or damaged, and "
        f"reading on would silently roll back to version {dataset.version}. Readable versions: {readable}; open one "
        "with --version N"
    ) from None


def newest_committed(collection: Any) -> tuple[int, str] | None:
    """The newest version a commit was begun for, and its transaction file (``<read version>-<uuid>.txn``).

    Args:
        collection: the collection.

    Returns:
        (version, file URL), or None where there are no transaction files.
    """
    folder = storage.join(collection.table_url, "_transactions")
    try:
        fs, path = storage.filesystem(folder)
        names = [posixpath.basename(n) for n in fs.ls(path, detail=False)]
    except (FileNotFoundError, GeoSANEError):
        return None
    begun = [(int(n.split("-", 1)[0]) + 1, n) for n in names if n.endswith(".txn") and n.split("-", 1)[0].isdigit()]
    if not begun:
        return None
    version, name = max(begun)
    return version, storage.join(folder, name)


#: Lance names version N's manifest 2^64-1-N (newest first in a listing); tables of older Lance name it N.
INVERTED = 2**64 - 1


def readable_versions(collection: Any) -> list[int]:
    """The versions whose manifests open, oldest first (what ``--version N`` can still read)."""
    import lance

    folder = storage.join(collection.table_url, "_versions")
    fs, path = storage.filesystem(folder)
    versions = []
    for name in (posixpath.basename(n) for n in fs.ls(path, detail=False)):
        stem = name.removesuffix(".manifest")
        if name.endswith(".manifest") and stem.isdigit():
            versions.append(INVERTED - int(stem) if int(stem) > 2**63 else int(stem))
    readable = []
    for version in sorted(versions):
        try:
            with native_output_captured():
                lance.dataset(
                    collection.table_url, version=version, storage_options=storage.object_store_options(folder)
                )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 (a damaged manifest can make Lance's Rust code panic)
            continue
        readable.append(version)
    return readable


def newest_damaged(collection: Any, error: BaseException) -> str:
    """The message for a newest manifest that exists but cannot be read, with the versions that can.

    Args:
        collection: the collection.
        error: what opening it raised.

    Returns:
        The message.
    """
    detail = storage.redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
    readable = ", ".join(map(str, readable_versions(collection))) or "none"
    return (
        f"{collection.url}: the newest version cannot be opened ({detail}): its manifest is damaged. "
        f"Readable versions: {readable}; open one with --version N"
    )


def data_files(collection: Any, dataset: Any, address: int) -> list[str]:
    """The files that hold the row at ``address`` (the fragment is the address's upper 32 bits).

    Args:
        collection: the collection.
        dataset: its Lance dataset.
        address: the row's address.

    Returns:
        The data files, as URLs.
    """
    fragment = dataset.get_fragment(address >> 32)
    return [storage.join(collection.table_url, "data", f.path) for f in fragment.data_files()] if fragment else []


def unreadable(collection: Any, dataset: Any, error: Exception) -> str:
    """Which data file cannot be read, and whose models it holds.

    Args:
        collection: the collection.
        dataset: its Lance dataset.
        error: what reading raised.

    Returns:
        The message.
    """
    detail = storage.redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
    for fragment in dataset.get_fragments():
        try:
            fragment.to_table()
        except Exception:
            return bad_fragment(collection, fragment, detail)
    return f"cannot read {collection.url}: {detail}"


def bad_fragment(collection: Any, fragment: Any, detail: str) -> str:
    """A message naming a damaged data file and the models it holds.

    Args:
        collection: the collection.
        fragment: the Lance fragment that cannot be read.
        detail: what reading it said.

    Returns:
        The message.
    """
    files = ", ".join(storage.join(collection.table_url, "data", f.path) for f in fragment.data_files())
    try:
        with native_output_captured():
            ids = sorted(set(fragment.to_table(columns=["id"]).column("id").to_pylist()))
    except Exception:  # the ids are damaged too: the commit that wrote the file lists them
        ids = committed_ids(collection, fragment)
    held = "model(s) " + ", ".join(ids) if ids else "models whose ids cannot be read either"
    return (
        f"{collection.url}: data file {files} cannot be read ({detail}); it holds {held}; "
        f"`geosane collection verify {collection.url}` lists every bad model"
    )


def committed_ids(collection: Any, fragment: Any) -> list[str]:
    """The ids of the models the commit that wrote ``fragment``'s files added, from its commit message.

    Args:
        collection: the collection.
        fragment: a fragment whose ids cannot be read.

    Returns:
        The ids its commit message lists.
    """
    paths = {f.path for f in fragment.data_files()}
    dataset = collection.dataset()
    for transaction in dataset.get_transactions(dataset.version) if dataset else []:
        operation = getattr(transaction, "operation", None)
        written = {f.path for added in getattr(operation, "fragments", []) for f in added.files}
        if paths & written:
            message = transaction.transaction_properties.get(COMMIT_MESSAGE, "")
            return message.partition(IDS_FOLLOW)[2].split()
    return []


def mismatch(collection: Any, dataset: Any, model: str, part: str, address: int) -> str:
    """A message for a model part whose hash differs from what was written, naming the data file.

    Args:
        collection: the collection.
        dataset: its Lance dataset.
        model: the model id.
        part: ``record``, ``layout``, ``kept``, ``tokens`` or ``id``.
        address: the row's address.

    Returns:
        The message.
    """
    files = ", ".join(data_files(collection, dataset, address))
    return (
        f"{collection.url}: model {model}: its {part} does not match what was written (data file {files}); "
        f"the collection is damaged: `geosane collection verify {collection.url}` lists every bad model"
    )


def verify(collection: Any, progress: bool = True) -> list[str]:
    """Read and check every data file and every model (hashes, then the rebuilt weights against the id).

    Args:
        collection: the :class:`~geosane.collection.Collection` to check.
        progress: show a progress bar.

    Returns:
        One line per bad data file or model, naming the models and the files.
    """
    dataset = collection._required()
    problems = []
    checker = type(collection)(collection.url, None if dataset is None else dataset.version)
    if dataset is not None:  # a damaged file cannot hide the models of the others
        checker.readable = []
        for fragment in dataset.get_fragments():
            try:
                with native_output_captured():
                    fragment.to_table()
                checker.readable.append(fragment.fragment_id)
            except Exception as exc:
                problems.append(bad_fragment(collection, fragment, storage.redact(str(exc).splitlines()[0])))
    try:
        records = checker.records()
    except GeoSANEError as exc:
        return [*problems, str(exc)]
    for record in tqdm(records, desc="verify", unit="model", disable=not progress):
        try:
            checker.export(record)
        except GeoSANEError as exc:
            problems.append(str(exc))
    return problems
