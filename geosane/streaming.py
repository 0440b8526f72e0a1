"""A model's tokens a block of rows at a time, read from its state dict and written back into one, so that a large
model goes through the autoencoder without any whole-model copy of its tokens or of the decoded tokens.

A ViT-L holds 300M weights: as tokens, decoded tokens and a rebuilt state dict it would be three more copies of
itself (1.2 GB each). :class:`TokenReader` builds the rows that encoding asks for from the state dict, one layer's
block at a time; :class:`TokenWriter` takes decoded rows in order and writes each layer into its tensor as soon as
the layer is complete. Both use the tokenizer's own block functions (:func:`~geosane.tokenizer.fill_block`,
:func:`~geosane.tokenizer.block_tensors`), so a streamed model is the same to the bit as one tokenized whole.

    reader = TokenReader(state_dict, autoencoder.tokenizer)
    latents = autoencoder.encode(reader)                      # rows are read window group by window group
    writer = TokenWriter(reader.layout, reader.kept, targets=model.state_dict())
    autoencoder.decode_rows(latents, writer.write)            # each layer lands in the model's own tensor
    writer.finish()
"""

from __future__ import annotations

import bisect
from typing import Mapping

import torch

from geosane.errors import GeoSANEError
from geosane.tokenizer import (
    Layout,
    TokenizerConfig,
    block_tensors,
    block_valid,
    check_kept,
    fill_block,
    plan_layout,
    token_positions,
)

__all__ = ["TokenReader", "TokenWriter"]


class TokenReader:
    """A state dict's tokens, built on demand for a range of rows (:meth:`rows`). The block of the layer read last
    is kept, so that overlapping reads (halo windows share their edges) tokenize a large layer once."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], config: TokenizerConfig) -> None:
        self.state_dict = state_dict
        self.layout = plan_layout(state_dict, config)
        self.starts = [layer.start for layer in self.layout.layers]
        self.cached: tuple[int, torch.Tensor, torch.Tensor] | None = None  # layer index, its tokens and counts

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole model."""
        return self.layout.num_tokens

    @property
    def kept(self) -> dict[str, torch.Tensor]:
        """The tensors that are not tokenized, as they are."""
        return {entry.name: self.state_dict[entry.name] for entry in self.layout.kept}

    def block(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s ``[count, T]`` tokens and their real-value counts (the last one asked for is kept)."""
        if self.cached is None or self.cached[0] != index:
            layer = self.layout.layers[index]
            tokens = torch.empty(layer.count, self.layout.token_size, dtype=torch.float32)
            fill_block(tokens, layer, self.layout.mode, self.state_dict)
            self.cached = (index, tokens, block_valid(layer, self.layout))
        return self.cached[1], self.cached[2]

    def rows(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``first..last-1``: values ``[k, T]``, positions ``[k, 3]`` and real values per token ``[k]``.

        Args:
            first: the first token.
            last: one past the last token.

        Returns:
            Values, positions and counts, as :class:`~geosane.tokenizer.Tokens` holds them for the whole model.
        """
        values = torch.empty(last - first, self.layout.token_size, dtype=torch.float32)
        valid = torch.empty(last - first, dtype=torch.int64)
        index = max(0, bisect.bisect_right(self.starts, first) - 1)
        row = first
        while row < last:
            layer = self.layout.layers[index]
            tokens, counts = self.block(index)
            end = min(last, layer.start + layer.count)
            values[row - first : end - first] = tokens[row - layer.start : end - layer.start]
            valid[row - first : end - first] = counts[row - layer.start : end - layer.start]
            row, index = end, index + 1
        return values, token_positions(self.layout, first, last), valid


class TokenWriter:
    """Decoded rows, given in order (:meth:`write`), written layer by layer into ``targets`` (a model's own tensors,
    from ``model.state_dict()``), or into new tensors (:attr:`state_dict`) when there are no targets.

    Layout tensors that ``targets`` lacks are decoded and dropped (a classifier that is re-initialized); every target
    must be written (:meth:`finish` names any that was not). A layer that decodes to NaN or infinite values is an
    error naming it: generation never writes weights that compute NaN.
    """

    def __init__(
        self,
        layout: Layout,
        kept: Mapping[str, torch.Tensor],
        targets: dict[str, torch.Tensor] | None = None,
    ) -> None:
        check_kept(layout, kept)
        self.layout, self.kept, self.targets = layout, kept, targets
        self.state_dict: dict[str, torch.Tensor] = {}  # what was written, in the layout's key order after finish()
        self.next_row = 0
        self.layer = 0
        self.buffer: torch.Tensor | None = None  # the current layer's tokens as they arrive

    def write(self, first: int, values: torch.Tensor) -> None:
        """Rows ``first..first+len(values)-1`` of the decoded model; each call continues where the last one ended.

        Args:
            first: the first row's index.
            values: ``[k, T]`` token values in the model's units.

        Raises:
            GeoSANEError: rows out of order, or a layer that decodes to non-finite values.
        """
        if first != self.next_row:
            raise GeoSANEError(f"decoded rows arrive out of order: expected row {self.next_row:,}, got {first:,}")
        row, last = first, first + len(values)
        while row < last:
            layer = self.layout.layers[self.layer]
            if self.buffer is None:
                self.buffer = torch.empty(layer.count, self.layout.token_size, dtype=torch.float32)
            end = min(last, layer.start + layer.count)
            self.buffer[row - layer.start : end - layer.start] = values[row - first : end - first]
            row = end
            if end == layer.start + layer.count:
                self.store(block_tensors(self.buffer, layer, self.layout.mode))
                self.buffer, self.layer = None, self.layer + 1
        self.next_row = last

    def store(self, tensors: dict[str, torch.Tensor]) -> None:
        """One rebuilt layer: checked finite, then copied into its target (or kept as it is)."""
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise GeoSANEError(f"tensor {name!r} has {bad:,} non-finite value(s) of {tensor.numel():,}")
            if self.targets is None:
                self.state_dict[name] = tensor
            elif name in self.targets:
                target = self.targets[name]
                if target.shape != tensor.shape:
                    raise GeoSANEError(
                        f"{name!r}: the model has shape {tuple(target.shape)}, the decoded tensor {tuple(tensor.shape)}"
                    )
                self.state_dict[name] = target.copy_(tensor)

    def finish(self) -> dict[str, torch.Tensor]:
        """Write the kept tensors and check that every row and every target arrived.

        Returns:
            The written tensors in the layout's key order (the targets themselves where there are targets).

        Raises:
            GeoSANEError: missing rows, or a target no tensor was written into.
        """
        if self.next_row != self.layout.num_tokens:
            raise GeoSANEError(f"decoding stopped at row {self.next_row:,} of {self.layout.num_tokens:,}")
        self.store({entry.name: self.kept[entry.name] for entry in self.layout.kept})
        missing = sorted(set(self.targets or ()) - set(self.state_dict))
        if missing:
            raise GeoSANEError(f"{len(missing)} tensor(s) of the model were not decoded, e.g. {missing[:3]}")
        self.state_dict = {k: self.state_dict[k] for k in self.layout.keys if k in self.state_dict}
        return self.state_dict
