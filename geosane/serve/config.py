"""The service's settings (``geosane serve`` options), with its allow-lists of data and prompt weights."""

from __future__ import annotations

import re

from geosane.autoencoder.registry import DEFAULT
from geosane.config import option, settings
from geosane.errors import GeoSANEError

__all__ = ["ServeConfig"]


@settings(frozen=True)
class ServeConfig:
    """The service's settings (``geosane serve`` options)."""

    autoencoder: str = option(DEFAULT, "the autoencoder served: a run, its final/, or a shipped one", metavar="URL")
    storage: str = option("out/serve", "where finished jobs are written (a path or s3://)", metavar="URL")
    data: tuple[str, ...] = option(
        (),
        "user data that requests may name, besides the registered datasets: NAME=npz:PATH or NAME=imagefolder:DIR "
        "(repeat for more); a request names it as NAME, never by its path",
        metavar="NAME=SPEC",
    )
    prompt_weights: tuple[str, ...] = option(
        (),
        "prompt weights that requests may name: NAME=FILE or NAME=pretrained:ENTRY (repeat for more)",
        metavar="NAME=FILE",
    )
    replicas: int = option(1, "replicas of the deployment")
    cpus_per_replica: float = option(1.0, "CPUs each replica reserves")
    gpus_per_replica: float = option(0.0, "GPUs each replica reserves")
    max_queue: int = option(8, "jobs queued or running per replica; more are refused with 429")
    max_candidates: int = option(16, "the most candidates one request may ask for")
    anchor_cache: int = option(4, "generations whose fitted, encoded anchors a replica keeps for the next requests")
    host: str = option("127.0.0.1", "address the HTTP proxy listens on (0.0.0.0 in a cluster)")
    port: int = option(8000, "HTTP port")

    def offered(self, kind: str) -> dict[str, str]:
        """The allow-list ``data`` or ``prompt_weights`` as NAME -> what it stands for.

        Args:
            kind: ``data`` or ``prompt_weights``.

        Returns:
            Names and their specs or files.

        Raises:
            GeoSANEError: an entry that is not NAME=VALUE, or a name given twice.
        """
        entries: dict[str, str] = {}
        for entry in getattr(self, kind):
            name, sep, value = entry.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not value:
                raise GeoSANEError(
                    f"--{kind.replace('_', '-')} {entry!r}: expected NAME=VALUE, NAME of letters, digits, _ . -"
                )
            if name in entries:
                raise GeoSANEError(f"--{kind.replace('_', '-')}: {name!r} is given twice")
            entries[name] = value
        return entries
