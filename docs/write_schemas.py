"""Write the JSON schemas of GeoSANE's cards into this folder (``python docs/write_schemas.py``): a generated model's
card (``model-<rank>.json``) and a shipped autoencoder's (``card.json``). The tests check that they are current."""

from __future__ import annotations

import json
from pathlib import Path

from geosane.autoencoder.registry import AutoencoderCard
from geosane.generation import GeneratedCard

if __name__ == "__main__":
    here = Path(__file__).parent
    for model, name in ((GeneratedCard, "generated-card"), (AutoencoderCard, "autoencoder-card")):
        path = here / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=1) + "\n")
        print(f"wrote {path}")
