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
