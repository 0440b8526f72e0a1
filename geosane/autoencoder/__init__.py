"""The weight autoencoder: its settings (``config``), its building blocks (``layers``), the network with whole-model
encode/decode, save and load (``model``), the shipped autoencoders loadable by name (``registry``, files in
``shipped/``), its training losses (``losses``) and the gathering of a run's ZeRO checkpoints (``checkpoints``).

May import: the shared pieces (``geosane.errors``, ``storage``, ``tokenizer``, ``views``, ``version``). Never the
collection, training, generation or the bench: they use the autoencoder, not the other way round (a collection is
only ever passed in, as to :meth:`Autoencoder.check_collection`).
"""

from geosane.autoencoder.config import SIZES, AutoencoderConfig
from geosane.autoencoder.layers import sinusoidal
from geosane.autoencoder.model import Autoencoder, Latents, normalized_error, num_parameters

__all__ = ["SIZES", "Autoencoder", "AutoencoderConfig", "Latents", "normalized_error", "num_parameters", "sinusoidal"]
