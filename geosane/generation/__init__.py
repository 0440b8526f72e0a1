"""Generation: new, task-ready weights for a prompt architecture, decoded from the autoencoder's latent space.

Owns, in the order a generation goes: its settings (``config``), the prompt (``prompt``), the anchors and their
fitting to the prompt (``anchors``), sampling in the latent space (``sampling``), BatchNorm re-estimation and the
ranking on the selection split (``ranking``), the candidates (``candidates``), model cards (``cards``) and
:func:`generate`, the one stage function (``stage``).

May import: the collection (read only, for query anchors), the autoencoder, ``geosane.tasks``, ``geosane.datasets``
and the shared pieces. Never training, the zoo or the bench.
"""

from geosane.generation.anchors import adapt_input, backbone_weights, band_mapped_input, fit_to_prompt, parse_query
from geosane.generation.cards import write_generated
from geosane.generation.config import SAMPLINGS, GenerateConfig, Generated
from geosane.generation.prompt import Prompt, build_prompt, head_keys
from geosane.generation.ranking import reestimate_batchnorm
from geosane.generation.sampling import sample_latents
from geosane.generation.stage import generate

__all__ = [
    "SAMPLINGS",
    "GenerateConfig",
    "Generated",
    "Prompt",
    "adapt_input",
    "backbone_weights",
    "band_mapped_input",
    "build_prompt",
    "fit_to_prompt",
    "generate",
    "head_keys",
    "parse_query",
    "reestimate_batchnorm",
    "sample_latents",
    "write_generated",
]
