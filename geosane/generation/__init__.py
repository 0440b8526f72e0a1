"""Generation: new, task-ready weights for a prompt architecture, decoded from the autoencoder's latent space.

Owns, in the order a generation goes: its settings (``config``), the prompt (``prompt``), the target data
(``target``), the anchors and their fitting to the prompt (``anchors``), sampling in the latent space (``sampling``)
and the optional latent search (``search``), decoding into task models (``candidates``), BatchNorm re-estimation and
the ranking on the selection split (``ranking``), and model cards (``cards``). :class:`Generator` (``generator``)
calls them in that order; it is the only module that calls from one of them into another.

May import: the collection (read only, for query anchors), the autoencoder, ``geosane.tasks``, ``geosane.datasets``
and the shared pieces. Never training, the zoo or the bench.
"""

from typing import TYPE_CHECKING

from geosane.lazy import exports

if TYPE_CHECKING:  # names resolve on first use (geosane.lazy): importing one module loads no other
    from geosane.generation.anchors import fit_to_prompt, parse_query
    from geosane.generation.cards import GeneratedCard, card_markdown, write_generated
    from geosane.generation.config import SAMPLINGS, GenerateConfig, Generated
    from geosane.generation.generator import AnchorCache, Generator, generate
    from geosane.generation.prompt import Prompt, build_prompt, head_keys
    from geosane.generation.ranking import RANKINGS, reestimate_batchnorm
    from geosane.generation.sampling import sample_latents

#: Public name -> the module that defines it.
EXPORTS = {
    **dict.fromkeys(("SAMPLINGS", "GenerateConfig", "Generated"), "geosane.generation.config"),
    **dict.fromkeys(("Prompt", "build_prompt", "head_keys"), "geosane.generation.prompt"),
    **dict.fromkeys(("fit_to_prompt", "parse_query"), "geosane.generation.anchors"),
    **dict.fromkeys(("AnchorCache", "Generator", "generate"), "geosane.generation.generator"),
    **dict.fromkeys(("RANKINGS", "reestimate_batchnorm"), "geosane.generation.ranking"),
    **dict.fromkeys(("sample_latents",), "geosane.generation.sampling"),
    **dict.fromkeys(("GeneratedCard", "card_markdown", "write_generated"), "geosane.generation.cards"),
}

__all__ = list(EXPORTS)
__getattr__, __dir__ = exports(__name__, EXPORTS)
