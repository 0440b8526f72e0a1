"""Helpers that several test modules use (test modules never import each other)."""

from __future__ import annotations

import os
import socket

import torch

#: Real timm architectures of the families GeoSANE targets, at test sizes.
TIMM_MODELS = [
    "resnet18",
    "vit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "convnext_atto",
]


def assert_bit_exact(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, and every tensor equal in dtype, shape and every bit."""
    assert list(actual) == list(expected), "keys or their order differ"
    for name, tensor in expected.items():
        got = actual[name]
        assert got.dtype == tensor.dtype, name
        assert got.shape == tensor.shape, name
        a = tensor.contiguous().reshape(-1).view(torch.uint8) if tensor.numel() else tensor
        b = got.contiguous().reshape(-1).view(torch.uint8) if got.numel() else got
        assert torch.equal(a, b), f"{name} differs"


class Exploit:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_legacy_collection(root: str, state_dicts: dict[str, dict[str, torch.Tensor]], token_size: int = 230) -> list:
    """A collection in the first layout (manifest.json, shards/, layouts/, kept/), as GeoSANE 0.1 wrote it, for
    the tests that read and migrate one. Returns its records."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from geosane.collection import make_record
    from geosane.sources import ModelSource, content_sha256
    from geosane.tokenizer import TokenizerConfig, tokenize

    config, folder, records = TokenizerConfig(token_size=token_size), Path(root), []
    for sub in ("shards", "layouts", "kept"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, sd in state_dicts.items():
        source = ModelSource(name=name, uri=f"memory:{name}", sha256=content_sha256(sd), state_dict=sd)
        tokens = tokenize(sd, config)
        record = make_record(source, tokens, config, {})
        positions = tokens.positions.numpy().astype(np.int32)
        table = pa.table(
            {
                "index": positions[:, 0],
                "layer": positions[:, 1],
                "within": positions[:, 2],
                "valid": tokens.valid.numpy().astype(np.int32),
                "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.tokens.numpy().reshape(-1)), token_size),
            }
        )
        pq.write_table(table, folder / "shards" / f"{record.id}.parquet", compression="zstd")
        (folder / "layouts" / f"{record.id}.json").write_text(json.dumps(tokens.layout.to_dict()))
        save_file({k: v.contiguous() for k, v in tokens.kept.items()}, folder / "kept" / f"{record.id}.safetensors")
        records.append(record)
    manifest = {"format": "geosane.collection", "version": 1, "token_size": token_size, "mode": "dense"}
    manifest["models"] = [asdict(r) for r in records]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return records


def import_geosane(_: int) -> None:
    """Warms up a worker process of the concurrency tests: the imports take seconds, the collects should not."""
    import geosane.collection  # noqa: F401


def collect_in_process(url: str, uris: list[str], env: dict[str, str]) -> list[str] | str:
    """Run in a separate process by the concurrency tests: collect ``uris`` into ``url`` with the environment
    ``env`` (an S3 endpoint); the ids reported added, or the error's message."""
    import logging

    os.environ.update(env)
    from geosane.collection import collect
    from geosane.errors import GeoSANEError

    logging.disable(logging.WARNING)
    try:
        added, _ = collect(uris, url, token_size=64, progress=False, create_bucket=False)
    except GeoSANEError as exc:
        return str(exc)
    return [r.id for r in added]
