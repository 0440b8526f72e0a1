"""A collection's table: its schema, and one model as one row (flat token arrays and a SHA-256 of each part)."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from geosane import storage
from geosane.tokenizer import Layout, TokenizerConfig, Tokens

__all__ = [
    "COMMIT_MESSAGE",
    "FORMAT",
    "FORMAT_VERSION",
    "IDS_FOLLOW",
    "ID_PATTERN",
    "ROWS_PER_FILE",
    "SCHEMA",
    "TABLE",
    "decode_tokens",
    "model_row",
    "row_batch",
    "table_schema",
    "token_arrays",
]

FORMAT = "geosane.collection"
FORMAT_VERSION = 2
TABLE = "models.lance"
#: one data file per model: Ray Data reads a file per task, so a collection's models are read (and cut into
#: windows) in parallel, and a damaged file damages one model
ROWS_PER_FILE = 1
#: the parts of a model that are hashed separately: a training read needs only the tokens
PARTS = ("record", "layout", "kept", "tokens")
#: every commit's message lists the ids it added after this, so a data file whose ids are damaged can be traced
IDS_FOLLOW = "; ids: "
COMMIT_MESSAGE = "__lance_commit_message"


#: One row per model. Token arrays are flat: ``tokens`` [N*T] float32, ``valid`` [N] and ``positions`` [N*3] int32.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("record", pa.string()),
        ("layout", pa.string()),
        ("kept", pa.large_binary()),
        ("tokens", pa.large_list(pa.float32())),
        ("valid", pa.list_(pa.int32())),
        ("positions", pa.list_(pa.int32())),
    ]
    + [(f"{part}_sha256", pa.string()) for part in PARTS]
)


def table_schema(config: TokenizerConfig) -> pa.Schema:
    """The table's schema, with the format and the token language in its metadata."""
    return SCHEMA.with_metadata(
        {"format": FORMAT, "version": str(FORMAT_VERSION), "token_size": str(config.token_size), "mode": config.mode}
    )


def token_arrays(tokens: Tokens) -> dict[str, np.ndarray]:
    """The flat arrays a row stores for ``tokens``."""
    return {
        "tokens": tokens.tokens.numpy().astype(np.float32, copy=False).reshape(-1),
        "valid": tokens.valid.numpy().astype(np.int32),
        "positions": tokens.positions.numpy().astype(np.int32).reshape(-1),
    }


def model_row(record_json: str, layout_json: str, kept: bytes, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A table row with the hashes of its parts.

    Args:
        record_json: the record as JSON.
        layout_json: the layout as JSON.
        kept: kept tensors as safetensors bytes.
        arrays: :func:`token_arrays`.

    Returns:
        The row, by column.
    """
    return {
        "id": json.loads(record_json)["id"],
        "record": record_json,
        "layout": layout_json,
        "kept": kept,
        **arrays,
        "record_sha256": storage.sha256(record_json),
        "layout_sha256": storage.sha256(layout_json),
        "kept_sha256": storage.sha256(kept),
        "tokens_sha256": storage.tokens_sha256(arrays["tokens"], arrays["valid"], arrays["positions"]),
    }


def row_batch(row: dict[str, Any], schema: pa.Schema) -> pa.RecordBatch:
    """One row as an Arrow record batch (list columns without a Python list of their values).

    Args:
        row: :func:`model_row`.
        schema: the table's schema.

    Returns:
        The batch.
    """
    arrays = []
    for f in schema:
        value = row[f.name]
        if isinstance(value, np.ndarray):  # one list cell without a Python list of its values
            offsets = pa.array([0, len(value)], pa.int64() if pa.types.is_large_list(f.type) else pa.int32())
            list_type = pa.LargeListArray if pa.types.is_large_list(f.type) else pa.ListArray
            arrays.append(list_type.from_arrays(offsets, pa.array(value, f.type.value_type)))
        else:
            arrays.append(pa.array([value], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def decode_tokens(row: dict[str, Any], layout: Layout, kept: dict[str, torch.Tensor]) -> Tokens:
    """A row's flat token arrays as :class:`~geosane.tokenizer.Tokens`.

    Args:
        row: ``tokens``, ``valid`` and ``positions`` arrays.
        layout: the model's layout.
        kept: its kept tensors.

    Returns:
        The tokens.
    """
    size = layout.token_size
    values = np.asarray(row["tokens"], dtype=np.float32).reshape(-1, size)
    positions = np.asarray(row["positions"], dtype=np.int64).reshape(-1, 3)
    valid = np.asarray(row["valid"], dtype=np.int64)
    return Tokens(torch.from_numpy(values.copy()), torch.from_numpy(valid), torch.from_numpy(positions), layout, kept)


ID_PATTERN = re.compile(r"^[0-9a-f]{1,64}$")
