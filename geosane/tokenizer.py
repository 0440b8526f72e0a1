"""State dicts to weight tokens and back, exactly.

GeoSANE's tokenizer (DESIGN.md, "Tokenization"): walk the state dict in order; every floating tensor whose
name ends in ``weight`` (or ``kernel``, as TF-converted ONNX files name it) becomes a matrix ``[out, rest]``
(1-D weights become ``[C, 1]``), its matching ``bias`` is appended as one more column, and the matrix is cut into
tokens of ``token_size`` values.

- ``dense`` mode flattens the matrix row-major and cuts it; only the last token of a layer is padded.
- ``per-channel`` mode (SANE) cuts every output row separately; the last token of each row is padded.

Tokens never cross layers. Each token has a 3-D position ``(global index, layer index, index within layer)``
and a mask of real values (always a prefix of the token). Every tensor that is not tokenized is *kept*: the
layout lists it by name with the reason, and its values travel with the model, so that
``detokenize(tokenize(sd)) == sd`` bit for bit, for every tensor.

The work is vectorized: one slice assignment per layer into preallocated buffers, never a loop per token.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch

from geosane.config import settings
from geosane.errors import GeoSANEError

__all__ = [
    "MODES",
    "ROWS_PER_PASS",
    "Layout",
    "LayerEntry",
    "KeptEntry",
    "TokenizerConfig",
    "Tokens",
    "block_tensors",
    "block_valid",
    "check_kept",
    "detokenize",
    "fill_block",
    "first_nonfinite",
    "plan_layout",
    "prefix_mask",
    "token_positions",
    "tokenize",
]

Mode = Literal["dense", "per-channel"]
MODES: tuple[str, ...] = ("dense", "per-channel")
#: Tokens per pass of a whole model's statistics and errors (bounds their memory).
ROWS_PER_PASS = 65_536

#: Floating dtypes whose values float32 tokens hold exactly.
TOKEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

#: Why a tensor is kept instead of tokenized, checked in this order. The first rule that matches names the
#: reason; floating tensors whose names end in ``weight`` are tokenized unless an earlier rule matched.
KEPT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("normalization statistics", re.compile(r"(^|[._])(running_mean|running_var|num_batches_tracked)$")),
    ("position embedding", re.compile(r"(^|[._])(pos_embed|absolute_pos_embed|pos_embedding|position_embeddings?)$")),
    ("special token", re.compile(r"(^|[._])(cls_token|dist_token|reg_token|mask_token)$")),
    ("relative position table", re.compile(r"relative_position_(bias_table|index)$")),
)


#: Weight names: PyTorch's ``weight`` (``x.weight``, ``in_proj_weight``) and TF/Keras ``kernel`` as ONNX
#: converters keep it (``conv2d_1/kernel:0``). The bias of a weight has the same stem and tail.
WEIGHT_NAME = re.compile(r"^(?P<stem>.*)(weight|kernel)(?P<tail>:\d+)?$")


#: The largest token GeoSANE accepts (a ``vit_large`` row is 4,096 values; DESIGN.md's tokens are 230).
MAX_TOKEN_SIZE = 65_536


@settings(frozen=True)
class TokenizerConfig:
    """How weights become tokens: values per token and how matrices are cut."""

    token_size: int = field(default=230, metadata={"help": "values per token"})
    mode: Mode = field(default="dense", metadata={"help": "how matrices are cut", "choices": MODES})

    def __post_init__(self) -> None:
        if not 1 <= self.token_size <= MAX_TOKEN_SIZE:
            raise GeoSANEError(
                f"token_size must be between 1 and {MAX_TOKEN_SIZE:,} values, got {self.token_size:,} (a token is "
                "one row of the autoencoder's input; rows of more values do not fit a network or its memory)"
            )


DEFAULT_TOKENIZER = TokenizerConfig()  # DESIGN.md's token language (230 values, dense), every tokenizing default


@dataclass(frozen=True)
class LayerEntry:
    """One tokenized weight (and its bias): where its tokens are and how to rebuild it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    start: int  # first token of this layer in the model's sequence
    count: int  # number of tokens
    bias: str | None = None
    bias_dtype: str | None = None

    @property
    def rows(self) -> int:
        """Rows of the layer matrix."""
        return self.shape[0]

    @property
    def cols(self) -> int:
        """Values per row, bias column included."""
        rest = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        return rest + (1 if self.bias else 0)


@dataclass(frozen=True)
class KeptEntry:
    """A tensor stored as it is, beside the tokens."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


@dataclass(frozen=True)
class Layout:
    """Everything needed to invert tokenization: the key order, the layers and the kept tensors."""

    token_size: int
    mode: Mode
    keys: tuple[str, ...]
    layers: tuple[LayerEntry, ...]
    kept: tuple[KeptEntry, ...] = field(default_factory=tuple)

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole model."""
        return self.layers[-1].start + self.layers[-1].count if self.layers else 0

    def to_dict(self) -> dict:
        """The layout as JSON-ready data."""
        return {
            "token_size": self.token_size,
            "mode": self.mode,
            "keys": list(self.keys),
            "layers": [asdict(layer) for layer in self.layers],
            "kept": [asdict(kept) for kept in self.kept],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Layout:
        """A layout from :meth:`to_dict`."""
        try:
            return cls(
                token_size=int(data["token_size"]),
                mode=data["mode"],
                keys=tuple(data["keys"]),
                layers=tuple(LayerEntry(**{**e, "shape": tuple(e["shape"])}) for e in data["layers"]),
                kept=tuple(KeptEntry(**{**e, "shape": tuple(e["shape"])}) for e in data["kept"]),
            )
        except (KeyError, TypeError) as exc:
            raise GeoSANEError(f"malformed layout: {exc}") from exc


@dataclass
class Tokens:
    """A model as tokens: values ``[N, T]`` float32, positions ``[N, 3]`` int64, real values per token ``[N]``.

    The real values of a token are always a prefix of it, so ``valid`` holds the whole mask; ``mask`` expands
    it to ``[N, T]`` booleans on demand (for a 300M-parameter model that is 300 MB nobody may need).
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    layout: Layout
    kept: dict[str, torch.Tensor]

    @property
    def mask(self) -> torch.Tensor:
        """``[N, T]`` booleans, True for real values."""
        return prefix_mask(self.valid, self.layout.token_size)

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole model."""
        return len(self.tokens)

    def rows(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``first..last-1``: values, positions and real values per token (as ``geosane.streaming`` reads).

        Args:
            first: the first token.
            last: one past the last token.

        Returns:
            Values ``[k, T]``, positions ``[k, 3]`` and counts ``[k]``.
        """
        return self.tokens[first:last], self.positions[first:last], self.valid[first:last]


def first_nonfinite(state_dict: dict[str, Any]) -> tuple[str, int, int] | None:
    """The first floating-point tensor with NaN or infinite values: its name, how many, of how many; None if none.
    Collections refuse such weights, and generation never writes them."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key, int((~torch.isfinite(tensor)).sum()), tensor.numel()
    return None


def prefix_mask(valid: Any, token_size: int) -> Any:
    """``[..., T]`` booleans that are True for the first ``valid`` values of each token.

    Args:
        valid: real values per token, a torch tensor or (in Ray Data's window tasks) a NumPy array.
        token_size: values per token.

    Returns:
        The mask, of the same kind as ``valid``.
    """
    if isinstance(valid, np.ndarray):
        return np.arange(token_size) < valid[..., None]
    return torch.arange(token_size, device=valid.device) < valid.unsqueeze(-1)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise GeoSANEError(f"unknown dtype {name!r} in layout")
    return dtype


def named_reason(name: str) -> str | None:
    """The first KEPT_RULES reason whose pattern matches ``name``."""
    for reason, pattern in KEPT_RULES:
        if pattern.search(name):
            return reason
    return None


def kept_reason(name: str, tensor: torch.Tensor) -> str | None:
    """Why ``name`` is not tokenized, or None when it is a weight to tokenize."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return "integer or boolean buffer"
    reason = named_reason(name)
    if reason is not None:
        return reason
    if not WEIGHT_NAME.match(name):
        return "not a weight"
    if dtype_name(tensor.dtype) not in TOKEN_DTYPES:
        return f"dtype {dtype_name(tensor.dtype)} not exact in float32 tokens"
    if tensor.dim() == 0 or tensor.numel() == 0:
        return "scalar or empty weight"
    return None


def matching_bias(name: str, weight: torch.Tensor, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The bias that belongs to weight ``name`` (``x.weight`` -> ``x.bias``, ``in_proj_weight`` -> ``in_proj_bias``,
    ``conv/kernel:0`` -> ``conv/bias:0``)."""
    match = WEIGHT_NAME.match(name)
    assert match is not None
    bias_name = f"{match['stem']}bias{match['tail'] or ''}"
    bias = state_dict.get(bias_name)
    if (
        isinstance(bias, torch.Tensor)
        and dtype_name(bias.dtype) in TOKEN_DTYPES
        and bias.dim() == 1
        and bias.shape[0] == weight.shape[0]
        and named_reason(bias_name) is None
    ):
        return bias_name
    return None


def plan_layout(state_dict: Mapping[str, torch.Tensor], config: TokenizerConfig = DEFAULT_TOKENIZER) -> Layout:
    """Decide, without touching values, which tensors become which tokens.

    Args:
        state_dict: the model's tensors.
        config: the token language.

    Returns:
        The layout.
    """
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise GeoSANEError(f"state_dict entry {name!r} is a {type(tensor).__name__}, expected a tensor")
    consumed: set[str] = set()
    layers: list[LayerEntry] = []
    start = 0
    for name, tensor in state_dict.items():
        if kept_reason(name, tensor) is not None:
            continue
        bias = matching_bias(name, tensor, state_dict)
        if bias:
            consumed.add(bias)
        rows = tensor.shape[0]
        cols = (tensor.numel() // rows) + (1 if bias else 0)
        if config.mode == "dense":
            count = math.ceil(rows * cols / config.token_size)
        else:
            count = rows * math.ceil(cols / config.token_size)
        layers.append(
            LayerEntry(
                name=name,
                shape=tuple(tensor.shape),
                dtype=dtype_name(tensor.dtype),
                start=start,
                count=count,
                bias=bias,
                bias_dtype=dtype_name(state_dict[bias].dtype) if bias else None,
            )
        )
        start += count
    tokenized = {layer.name for layer in layers} | consumed
    kept = tuple(
        KeptEntry(name, tuple(t.shape), dtype_name(t.dtype), kept_reason(name, t) or "bias without its weight")
        for name, t in state_dict.items()
        if name not in tokenized
    )
    return Layout(config.token_size, config.mode, tuple(state_dict), tuple(layers), kept)


def _layer_matrix(block: torch.Tensor, layer: LayerEntry, mode: str) -> torch.Tensor:
    """A ``[rows, cols]`` view of a layer's values inside its ``[count, T]`` block of tokens (bias column included)."""
    if mode == "dense":
        return block.reshape(-1)[: layer.rows * layer.cols].view(layer.rows, layer.cols)
    return block.reshape(layer.rows, -1)[:, : layer.cols]


def _padding(block: torch.Tensor, layer: LayerEntry, mode: str) -> torch.Tensor:
    """A view of the layer's padding: the tail of its last token (dense) or of each row's last token."""
    if mode == "dense":
        return block.reshape(-1)[layer.rows * layer.cols :]
    return block.reshape(layer.rows, -1)[:, layer.cols :]


def fill_block(block: torch.Tensor, layer: LayerEntry, mode: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write one layer's weight (and bias) into its ``[count, T]`` block of tokens, padding zeroed: the one place
    where values become tokens, for a whole model (:func:`tokenize`) and a layer at a time (``geosane.streaming``).

    Args:
        block: the layer's ``[count, T]`` float32 tokens, written in place.
        layer: the layer.
        mode: the tokenizer mode.
        state_dict: the model's tensors.
    """
    matrix = _layer_matrix(block, layer, mode)
    weight = state_dict[layer.name].detach().reshape(layer.rows, -1)
    if layer.bias:
        matrix[:, :-1].copy_(weight)
        matrix[:, -1].copy_(state_dict[layer.bias].detach())
    else:
        matrix.copy_(weight)
    _padding(block, layer, mode).zero_()


def block_valid(layer: LayerEntry, layout: Layout) -> torch.Tensor:
    """Real values per token of one layer's ``[count]`` tokens (a prefix of each token).

    Args:
        layer: the layer.
        layout: the model's layout.

    Returns:
        ``[count]`` int64.
    """
    size = layout.token_size
    if layout.mode == "dense":
        valid = torch.full((layer.count,), size, dtype=torch.int64)
        valid[-1] = layer.rows * layer.cols - (layer.count - 1) * size
        return valid
    per_row = layer.count // layer.rows
    row_valid = torch.full((per_row,), size, dtype=torch.int64)
    row_valid[-1] = layer.cols - (per_row - 1) * size
    return row_valid.repeat(layer.rows)


def block_tensors(block: torch.Tensor, layer: LayerEntry, mode: str) -> dict[str, torch.Tensor]:
    """One layer's weight (and bias) rebuilt from its ``[count, T]`` block of tokens, in the layer's dtypes: the one
    place where tokens become values again, for :func:`detokenize` and ``geosane.streaming``.

    Args:
        block: the layer's tokens (float32; padding is ignored).
        layer: the layer.
        mode: the tokenizer mode.

    Returns:
        ``{weight name: weight}``, with ``{bias name: bias}`` when the layer has one.
    """
    matrix = _layer_matrix(block, layer, mode)
    weight = torch.empty(layer.shape, dtype=dtype_from_name(layer.dtype))
    if not layer.bias:
        weight.view(layer.rows, -1).copy_(matrix)
        return {layer.name: weight}
    weight.view(layer.rows, -1).copy_(matrix[:, :-1])
    bias = torch.empty(layer.rows, dtype=dtype_from_name(layer.bias_dtype or "float32"))
    return {layer.name: weight, layer.bias: bias.copy_(matrix[:, -1])}


def token_positions(layout: Layout, first: int, last: int) -> torch.Tensor:
    """``[last - first, 3]`` positions (global index, layer index, index within layer) of tokens ``first..last-1``.

    Args:
        layout: the model's layout.
        first: the first token.
        last: one past the last token.

    Returns:
        The positions, int64.
    """
    starts = torch.tensor([layer.start for layer in layout.layers], dtype=torch.int64)
    index = torch.arange(first, last, dtype=torch.int64)
    layer_index = torch.searchsorted(starts, index, right=True) - 1
    return torch.stack([index, layer_index, index - starts[layer_index]], dim=1)


def tokenize(state_dict: Mapping[str, torch.Tensor], config: TokenizerConfig = DEFAULT_TOKENIZER) -> Tokens:
    """Turn a state dict into tokens, mask, positions and the layout that inverts them.

    Args:
        state_dict: the model's tensors.
        config: the token language.

    Returns:
        Tokens, real values per token, positions, layout and kept tensors.
    """
    layout = plan_layout(state_dict, config)
    n = layout.num_tokens
    tokens = torch.empty(n, config.token_size, dtype=torch.float32)
    valid = torch.empty(n, dtype=torch.int64)  # real values per token; the mask is a prefix of this length
    for layer in layout.layers:
        span = slice(layer.start, layer.start + layer.count)
        fill_block(tokens[span], layer, config.mode, state_dict)
        valid[span] = block_valid(layer, layout)
    kept = {entry.name: state_dict[entry.name] for entry in layout.kept}
    return Tokens(tokens, valid, token_positions(layout, 0, n), layout, kept)


def check_kept(layout: Layout, kept: Mapping[str, torch.Tensor]) -> None:
    """Refuse kept tensors that are missing or do not fit the layout, naming the first (shape and dtype).

    Args:
        layout: the model's layout.
        kept: the tensors it keeps as they are.
    """
    for entry in layout.kept:
        if entry.name not in kept:
            raise GeoSANEError(f"kept tensor {entry.name!r} ({entry.reason}) is missing")
        value = kept[entry.name]
        if tuple(value.shape) != entry.shape or dtype_name(value.dtype) != entry.dtype:
            raise GeoSANEError(
                f"kept tensor {entry.name!r}: expected shape {entry.shape} {entry.dtype}, "
                f"got {tuple(value.shape)} {dtype_name(value.dtype)}"
            )


def detokenize(
    tokens: torch.Tensor, layout: Layout, kept: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Rebuild the state dict, in its original key order and dtypes, from tokens and kept tensors.

    Kept tensors missing from ``kept`` (for instance when decoding generated tokens without the prompt's
    buffers) are an error: export must return every tensor or say which one it cannot.

    Args:
        tokens: ``[N, token_size]`` values (padding is ignored).
        layout: the layout :func:`tokenize` made.
        kept: the kept tensors (default: none; a layout that keeps tensors needs them).

    Returns:
        The state dict, in the original key order, dtypes and shapes.

    Raises:
        GeoSANEError: tokens or kept tensors that do not fit the layout.
    """
    expected = (layout.num_tokens, layout.token_size)
    if tuple(tokens.shape) != expected:
        raise GeoSANEError(f"tokens have shape {tuple(tokens.shape)}, layout expects {expected}")
    tokens = tokens.to(torch.float32)
    kept = kept or {}
    check_kept(layout, kept)
    rebuilt: dict[str, torch.Tensor] = {entry.name: kept[entry.name] for entry in layout.kept}
    for layer in layout.layers:
        rebuilt.update(block_tensors(tokens[layer.start : layer.start + layer.count], layer, layout.mode))
    return {key: rebuilt[key] for key in layout.keys}
