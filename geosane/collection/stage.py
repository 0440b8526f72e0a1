"""The collect stage: read models from files, directories, object storage, timm and the pretrained catalogue,
tokenize them and add them to a collection in one commit."""

from __future__ import annotations

from geosane import storage
from geosane.collection import sources
from geosane.collection.records import ModelRecord
from geosane.collection.table import Collection
from geosane.tokenizer import TokenizerConfig

__all__ = ["collect"]


def collect(
    uris: list[str],
    out: str,
    token_size: int | None = None,
    mode: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    create_bucket: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[list[ModelRecord], int]:
    """The collect stage: read the models that ``uris`` name, tokenize them and add them to the collection at ``out``
    in one commit.

    Args:
        uris: files, directories, ``s3://`` URLs, ``timm:`` names, ``pretrained:`` entries.
        out: the collection's URL.
        token_size: values per token (default: the collection's, 230 for a new one).
        mode: ``dense`` or ``per-channel`` (default: the collection's, dense for a new one).
        tags: metadata for every model of the call.
        progress: show a progress bar.
        create_bucket: create the ``s3://`` bucket if it does not exist.
        allow_nonfinite: keep models with NaN or infinite weights (refused by default: they train to NaN).

    Returns:
        The records of the models that were new, and how many models the sources named.

    Raises:
        GeoSANEError: a source that cannot be read or another token language than the collection's; nothing is
            committed.
    """
    collection = Collection(out)
    existing = collection.config() or TokenizerConfig()
    config = TokenizerConfig(existing.token_size if token_size is None else token_size, mode or existing.mode)  # type: ignore[arg-type]
    if collection.config() is None:
        storage.ensure_bucket(out, create=create_bucket)  # before reading any model: a typo fails in seconds
    found = sources.find(uris)
    added = collection.add(
        (model.read() for model in found),
        config,
        tags,
        total=len(found),
        progress=progress,
        create_bucket=create_bucket,
        allow_nonfinite=allow_nonfinite,
    )
    return added, len(found)
