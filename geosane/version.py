"""GeoSANE's version, and the versions of what it runs on (recorded with every collection, run and result)."""

from __future__ import annotations

__all__ = ["__version__", "software_versions"]

__version__ = "0.1.0"


def software_versions(*extra: str) -> dict[str, str]:
    """Versions of GeoSANE and the libraries whose behaviour a stored result depends on, plus the installed
    distributions named in ``extra`` (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    import pyarrow
    import safetensors
    import torch

    versions = {
        "geosane": __version__,
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "safetensors": safetensors.__version__,
    }
    for name in extra:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
