"""GeoSANE's version, and the versions of what it runs on (recorded with every collection, run and result)."""

from __future__ import annotations

__version__ = "0.1.0"


def software_versions() -> dict[str, str]:
    """Versions of GeoSANE and the libraries whose behaviour a stored result depends on."""
    import pyarrow
    import safetensors
    import torch

    return {
        "geosane": __version__,
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "safetensors": safetensors.__version__,
    }
