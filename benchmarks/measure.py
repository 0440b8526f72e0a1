"""What the benchmark scripts share: time and extra peak resident memory of one call (Linux: reads /proc), a free
port on 127.0.0.1, and saving a result with what made it."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn: Callable[[], T]) -> tuple[float, int, T]:
    """Seconds and extra peak RSS (bytes) of one call; the result is returned so it stays alive during the peak."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = rss_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, (rss_kib("VmHWM") - base) * 1024, result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a local S3 server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save(result: dict, out: str | Path) -> None:
    """Write a benchmark's result with what made it: the machine, the versions and the date."""
    import json
    import platform

    import timm
    import torch

    import geosane

    result = {
        **result,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "versions": geosane.software_versions() | {"timm": timm.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")  # a run stopped while writing leaves the previous result
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(path)
    print(f"saved {path}")
