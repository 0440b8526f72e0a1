"""Reading collections in the first layout (GeoSANE 0.1): a JSON manifest beside one file per model and part.

    manifest.json                 one record per model
    shards/<id>.parquet           the model's tokens, one row per token
    layouts/<id>.json             how to turn the tokens back into the state dict
    kept/<id>.safetensors         tensors that are not tokenized

Read only: :class:`geosane.Collection` reads such a collection through this module, and
``geosane collection migrate URL`` copies it into the table format, where it can grow. Nothing here was hashed
when it was written, so the only check on what it reads is the model id itself (a hash of the whole state dict),
which every export compares against.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geosane import storage
from geosane.errors import GeoSANEError

FORMAT = "geosane.collection"
MANIFEST = "manifest.json"


def is_legacy(url: str) -> bool:
    return storage.exists(storage.join(url, MANIFEST))


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest, checked to be one."""
    path = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeoSANEError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        what = (
            f"format {manifest.get('format')!r}" if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        )
        raise GeoSANEError(f"{path}: not a GeoSANE collection manifest ({what})")
    if manifest.get("version", 0) > 1 or not isinstance(manifest.get("models"), list):
        raise GeoSANEError(f"{path}: not a version-1 collection manifest with a list of models")
    for key in ("token_size", "mode"):
        if key not in manifest:
            raise GeoSANEError(f"{path}: manifest has no {key!r}")
    return manifest


def part_urls(url: str, model_id: str) -> dict[str, str]:
    """Where each part of model ``model_id`` lives."""
    return {
        "tokens": storage.join(url, "shards", f"{model_id}.parquet"),
        "layout": storage.join(url, "layouts", f"{model_id}.json"),
        "kept": storage.join(url, "kept", f"{model_id}.safetensors"),
    }


def read_parts(url: str, model_id: str) -> dict[str, Any]:
    """One model's parts as the table format stores them: ``layout`` (JSON text), ``kept`` (safetensors bytes) and
    the token arrays ``tokens`` (float32, flat), ``valid`` and ``positions`` (int32, flat)."""
    urls = part_urls(url, model_id)
    with storage.errors_named(urls["tokens"], "read"):
        fs, path = storage.filesystem(urls["tokens"])
        with fs.open(path, "rb") as handle:
            try:
                table = pq.read_table(handle)
            except (pa.ArrowException, OSError) as exc:
                raise GeoSANEError(f"{urls['tokens']}: model {model_id}: not a readable token shard ({exc})") from exc
    positions = np.stack([table.column(c).to_numpy() for c in ("index", "layer", "within")], axis=1)
    return {
        "layout": storage.read_bytes(urls["layout"]).decode(),
        "kept": storage.read_bytes(urls["kept"]),
        "tokens": table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        "valid": table.column("valid").to_numpy().astype(np.int32),
        "positions": positions.astype(np.int32).reshape(-1),
    }
