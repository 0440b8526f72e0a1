"""The autoencoder's settings: its shape, the token language it reads, how whole models are cut into windows, and
the named sizes from a CPU test to the published 0.9B model."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pydantic

from geosane.config import field_problems, settings
from geosane.errors import GeoSANEError
from geosane.registry import Registry
from geosane.tokenizer import MODES, TokenizerConfig

__all__ = ["SIZES", "AutoencoderConfig"]


@settings(frozen=True)
class AutoencoderConfig:
    """The network's shape, the token language it reads, and how whole models are cut into windows."""

    token_size: int = 230  # values per token, the collection's
    mode: str = "dense"  # the collection's tokenizer mode
    d_model: int = 64
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    heads: int = 4
    latent_dim: int = 16
    window: int = 32  # tokens per training window (the projection head flattens exactly this many)
    projection_dim: int = 32
    dropout: float = 0.0
    halo: int | None = None  # encode/decode: context tokens on each side of a core (None: a quarter of the window)
    core: int | None = None  # encode/decode: tokens per window whose outputs are kept (None: the window less halos)
    batch_tokens: int = 16_384  # encode/decode: tokens per forward pass, which bounds activation memory

    def __post_init__(self) -> None:
        if min(self.token_size, self.d_model, self.heads, self.latent_dim, self.window, self.batch_tokens) < 1:
            raise GeoSANEError(f"autoencoder sizes must be >= 1: {self}")
        if self.d_model % self.heads:
            raise GeoSANEError(f"d_model {self.d_model} is not divisible by {self.heads} heads")
        if self.core_tokens < 1 or self.halo_tokens < 0:
            raise GeoSANEError(
                f"halo windows need core >= 1 and halo >= 0, got core {self.core_tokens}, halo {self.halo_tokens}"
            )
        if self.mode not in MODES:
            raise GeoSANEError(f"unknown tokenizer mode {self.mode!r}; expected one of {', '.join(MODES)}")

    @property
    def halo_tokens(self) -> int:
        """Context tokens on each side of a halo window's core (default: a quarter of the window)."""
        return self.window // 4 if self.halo is None else self.halo

    @property
    def core_tokens(self) -> int:
        """Tokens per halo window whose outputs are kept (default: the window less its halos)."""
        return self.window - 2 * self.halo_tokens if self.core is None else self.core

    @property
    def tokenizer(self) -> TokenizerConfig:
        """How to tokenize a state dict for this autoencoder."""
        return TokenizerConfig(self.token_size, self.mode)  # type: ignore[arg-type]

    @classmethod
    def named(
        cls, size: str, token_size: int = 230, window: int | None = None, mode: str = "dense", **overrides: Any
    ) -> AutoencoderConfig:
        """A named size (``tiny``, ``base``, ``geosane``) for a collection's token size, at another window if given.

        Args:
            size: ``tiny``, ``small``, ``compact``, ``base`` or ``geosane`` (:data:`SIZES`).
            token_size: the collection's values per token.
            window: tokens per training window instead of the size's.
            mode: the collection's tokenizer mode.
            **overrides: other settings changed (``d_model``, ``latent_dim``...).

        Returns:
            The settings.

        Raises:
            GeoSANEError: an unknown size or setting.
        """
        if size not in SIZES:
            raise GeoSANEError(f"unknown autoencoder size {size!r}; expected one of {', '.join(SIZES)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)} - {"token_size", "mode"})
        if unknown:
            raise GeoSANEError(
                f"unknown autoencoder setting(s) {unknown}; known: {', '.join(f.name for f in fields(cls))}"
            )
        shape = {**SIZES[size], **({"window": window} if window else {}), **overrides}
        return cls(token_size=token_size, mode=mode, **shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> AutoencoderConfig:
        """Settings as :meth:`Autoencoder.save` records them.

        Args:
            data: the recorded settings.
            source: where they were read from, for the error message.

        Returns:
            The settings.

        Raises:
            GeoSANEError: a setting this GeoSANE does not know, or a value of the wrong type.
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise GeoSANEError(f"{source}: unknown autoencoder setting(s) {unknown}")
        try:
            return cls(**data)
        except pydantic.ValidationError as exc:
            raise GeoSANEError(f"{source}: autoencoder settings: " + "; ".join(field_problems(exc))) from None


#: Named sizes: ``tiny`` for CPU tests and the demo, ``small`` for a laptop (tokens of 32 values), ``compact`` (a 4x
#: compressing latent for tokens of 32), ``base`` for a workstation, ``geosane`` as published (0.9B).
SIZES: Registry[dict[str, Any]] = Registry(
    "autoencoder size",
    {
        "tiny": {},
        # what two CPU cores train in 25 minutes into working reconstructions (benchmarks/reconstruct.py): a latent as
        # wide as the token, so that the network learns weights in general rather than compressing the lineages it saw
        "small": {"d_model": 128, "latent_dim": 32, "window": 64},
        # a latent 4x narrower than tokens of 32 values, a wider network: the compressing size for a GPU (on two CPU
        # cores it does not reach working reconstructions in minutes: benchmarks/results/autoencoder-sizes.json)
        "compact": {"d_model": 256, "latent_dim": 8, "window": 64, "encoder_blocks": 3, "decoder_blocks": 3},
        "base": {"d_model": 512, "encoder_blocks": 8, "decoder_blocks": 8, "heads": 8, "latent_dim": 64, "window": 256},
        "geosane": {
            "d_model": 1536,
            "encoder_blocks": 16,
            "decoder_blocks": 16,
            "heads": 16,
            "latent_dim": 128,
            "window": 512,
            "projection_dim": 128,
        },
    },
)
