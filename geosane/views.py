"""Windows of a model's token sequence and the augmented views the autoencoder learns from.

A window is ``W`` consecutive tokens (padded with empty tokens when a model is shorter). Two views of the same
window differ by multiplicative noise ``w * (1 + sigma * eps)`` on real values and optional random erasing of
whole tokens; the reconstruction target is always the clean window. Optionally each pass first permutes the hidden
units of a model's MLPs, where the layout shows that a permutation computes the same function: the windows then
come from a functionally equal twin of the model.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosane.config import settings

__all__ = [
    "HiddenUnits",
    "ViewConfig",
    "WindowSource",
    "cut_windows",
    "halo_windows",
    "hidden_units",
    "make_views",
    "model_windows",
    "permute_hidden_units",
    "shifted_starts",
    "window_starts",
    "windows_per_pass",
]


@settings(frozen=True)
class ViewConfig:
    """Windows and views: their length, noise, erasing, windows per pass, permutation and shift."""

    window: int = 32
    noise: float = 0.1
    erase_probability: float = 0.0  # chance that a token of a view is zeroed
    windows_per_model: float = 1.0  # random windows per model per pass, relative to its length / window
    # ... but at most this many (times windows_per_model): a 20M-parameter U-Net would otherwise draw 60 times the
    # windows of a zoo model and swamp what the autoencoder sees; large models are sampled per model, not per token
    max_windows_per_model: int = 256
    permute_hidden_units: bool = False  # training passes see models with their MLP hidden units permuted
    shift: float = 0.0  # the second view's window starts up to this fraction of a window away from the first's


def windows_per_pass(num_tokens: int, config: ViewConfig) -> int:
    """Random training windows drawn from a model of ``num_tokens`` tokens in one pass over the data: one per
    window-length (times ``windows_per_model``), capped at ``max_windows_per_model`` (times the same), so that a
    few large models do not swamp many small ones.

    Args:
        num_tokens: the model's length.
        config: window settings.

    Returns:
        The number of windows.
    """
    windows = min(num_tokens / config.window, config.max_windows_per_model)
    return max(1, int(round(config.windows_per_model * windows)))


def window_starts(num_tokens: int, config: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """Random starts of one pass's training windows.

    Args:
        num_tokens: the model's length.
        config: window settings.
        rng: the random generator.

    Returns:
        The starts.
    """
    span = max(0, num_tokens - config.window)
    return rng.integers(0, span + 1, size=windows_per_pass(num_tokens, config))


def halo_windows(num_tokens: int, core: int, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``core + 2 * halo`` tokens that cover a whole model, as (window starts, core starts).

    Cores tile the sequence; each window adds ``halo`` tokens of context on each side of its core. At the ends a
    window is shifted inwards so that it stays inside the model (its context is then on one side), as training
    windows do; a model shorter than a window is one window, padded with empty tokens at the end.

    Args:
        num_tokens: the model's length.
        core: tokens kept per window.
        halo: context tokens on each side.

    Returns:
        Window starts and core starts.
    """
    cores = np.arange(0, num_tokens, core)
    starts = np.clip(cores - halo, 0, max(0, num_tokens - core - 2 * halo))
    return starts, cores


def cut_windows(
    tokens: np.ndarray, positions: np.ndarray, valid: np.ndarray, starts: np.ndarray, window: int
) -> dict[str, np.ndarray]:
    """``[K, W, T]`` tokens, ``[K, W, 3]`` positions and ``[K, W]`` real-value counts of windows at ``starts``.

    Args:
        tokens: a model's ``[N, T]`` tokens.
        positions: their ``[N, 3]`` positions.
        valid: real values per token.
        starts: ``[K]`` window starts (windows past the end are padded).
        window: tokens per window.

    Returns:
        ``tokens`` ``[K, W, T]``, ``positions`` ``[K, W, 3]``, ``valid`` ``[K, W]``.
    """
    n, size = tokens.shape
    index = starts[:, None] + np.arange(window)[None, :]
    inside = index < n
    index = np.minimum(index, n - 1)
    return {
        "tokens": np.where(inside[..., None], tokens[index], 0).astype(np.float32),
        "positions": np.where(inside[..., None], positions[index], 0).astype(np.int64),
        "valid": np.where(inside, valid[index], 0).astype(np.int64),
    }


def make_views(
    batch: dict[str, np.ndarray],
    config: ViewConfig,
    rng: np.random.Generator,
    shifted: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Add two augmented views (``view1``, ``view2``) of each window in ``batch``. With ``shifted`` windows (the same
    model, starting elsewhere), ``view2`` is cut from those, and their clean tokens, positions and real-value counts
    come along as ``tokens2``, ``positions2``, ``valid2``: view 2's own target. Two overlapping windows that differ
    by more than noise are what give the contrastive term something to learn.

    Args:
        batch: windows (``tokens``, ``positions``, ``valid``).
        config: noise and erasing.
        rng: the random generator.
        shifted: the second views' windows, when they are cut elsewhere.

    Returns:
        The batch with ``view1`` and ``view2`` (and view 2's own targets).
    """
    from geosane.tokenizer import prefix_mask  # here, not above: importing this module loads no torch

    out = dict(batch)
    for name, source in (("view1", batch), ("view2", shifted or batch)):
        tokens = source["tokens"]
        view = tokens * (1 + config.noise * rng.standard_normal(tokens.shape, dtype=np.float32))
        if config.erase_probability:
            erased = rng.random(tokens.shape[:-1]) < config.erase_probability
            view = np.where(erased[..., None], 0, view)
        out[name] = np.where(prefix_mask(source["valid"], tokens.shape[-1]), view, 0).astype(np.float32)
    if shifted is not None:
        out.update({f"{key}2": shifted[key] for key in ("tokens", "positions", "valid")})
    return out


def shifted_starts(starts: np.ndarray, num_tokens: int, config: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """Starts of the second views' windows: each up to ``shift * window`` tokens from its first view's, inside the
    model.

    Args:
        starts: the first views' starts.
        num_tokens: the model's length.
        config: ``shift`` and ``window``.
        rng: the random generator.

    Returns:
        The starts.
    """
    reach = int(config.shift * config.window)
    offsets = rng.integers(-reach, reach + 1, size=len(starts))
    return np.clip(starts + offsets, 0, max(0, num_tokens - config.window))


# ------------------------------------------------------------------------------ hidden-unit permutation

MLP_INPUT = re.compile(r"^(?P<prefix>.+)\.fc1\.weight$")
Span = tuple[int, int, int, int]  # a tokenized layer: first token, token count, rows, values per row


@dataclass(frozen=True)
class HiddenUnits:
    """``size`` hidden units of an MLP. Permuting the rows of the ``rows`` layers (the first layer, with its bias
    column, and a norm over the units) and the same input channels of ``reader`` (``kernel`` values each) gives a
    model that computes the same function."""

    size: int
    rows: tuple[Span, ...]
    reader: Span
    kernel: int


def hidden_units(layout: Any) -> list[HiddenUnits]:
    """The MLPs of a layout whose hidden units can be permuted without changing what the model computes.

    Only two-layer MLPs ``<p>.fc1 -> activation [-> <p>.norm] -> <p>.fc2`` (timm's ``Mlp``, squeeze-excite modules)
    with agreeing shapes, and only when every tensor under ``<p>.`` is one of those tokenized layers or their
    biases: a gated MLP (``fc1`` twice as wide) or BatchNorm statistics over the units leave the MLP out rather
    than risk a different function.
    """
    layers = {layer.name: layer for layer in layout.layers}
    groups = []
    for name, first in layers.items():
        match = MLP_INPUT.match(name)
        second = layers.get(f"{match['prefix']}.fc2.weight") if match else None
        if match is None or second is None or len(second.shape) < 2 or second.shape[1] != first.shape[0]:
            continue
        prefix, size = match["prefix"] + ".", first.shape[0]
        norm = layers.get(f"{prefix}norm.weight")
        if norm is not None and norm.shape != (size,):
            continue
        # every tensor under the prefix must be one of these layers or their bias columns (tokens we permute)
        covered = {n for layer in (first, second, norm) if layer for n in (layer.name, layer.bias)}
        if any(key.startswith(prefix) and key not in covered for key in layout.keys):
            continue
        groups.append(
            HiddenUnits(
                size=size,
                rows=tuple((layer.start, layer.count, layer.rows, layer.cols) for layer in (first, norm) if layer),
                reader=(second.start, second.count, second.rows, second.cols),
                kernel=math.prod(second.shape[2:]),
            )
        )
    return groups


def layer_values(tokens: np.ndarray, span: Span, mode: str) -> np.ndarray:
    """A ``[rows, values per row]`` view of a layer inside a model's tokens (numpy twin of the tokenizer's)."""
    start, count, rows, cols = span
    block = tokens[start : start + count]
    if mode == "dense":
        return block.reshape(-1)[: rows * cols].reshape(rows, cols)
    return block.reshape(rows, -1)[:, :cols]


def permute_hidden_units(
    tokens: np.ndarray, groups: list[HiddenUnits], mode: str, rng: np.random.Generator
) -> np.ndarray:
    """A copy of a model's ``[N, T]`` tokens with every group's hidden units in a random order.

    Args:
        tokens: a model's tokens.
        groups: the permutable groups (:func:`hidden_units`).
        mode: the tokenizer mode.
        rng: the random generator.

    Returns:
        The permuted copy.
    """
    out = tokens.copy()
    for group in groups:
        order = rng.permutation(group.size)
        for span in group.rows:
            values = layer_values(out, span, mode)
            values[:] = values[order]
        values = layer_values(out, group.reader, mode)
        width = group.size * group.kernel  # the reader's bias column, if any, stays where it is
        channels = values[:, :width].reshape(len(values), group.size, group.kernel)
        values[:, :width] = channels[:, order].reshape(len(values), width)
    return out


# ------------------------------------------------------------------------------ Ray Data

PASSES = itertools.count()  # per Ray Data task worker: a fresh draw of windows for every block it handles


@dataclass(frozen=True)
class WindowSource:
    """What cutting one model's windows needs besides its tokens: its scale, its tokenizer mode and permutable MLPs,
    and its data files (for errors)."""

    mean: float
    std: float
    mode: str
    hidden: list[HiddenUnits]
    files: list[str]


def model_windows(
    block: dict[str, np.ndarray], views: ViewConfig, seed: int, models: dict[str, WindowSource]
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function over blocks of collection rows, one row per whole model: the training
    windows of each model, with their two views and their model's scale (``mean``, ``std``: how the autoencoder
    standardizes them).

    Every model's tokens are checked against the hash written with them before a window is cut. Random draws are
    seeded by the run's ``seed``, the model and how many blocks this worker process has cut before: the same
    schedule draws the same windows, another schedule (more workers, a restarted task worker) draws others. Lives
    here, beside numpy only, so that Ray Data's task workers never import torch.

    Args:
        block: collection rows (one whole model each).
        views: window and augmentation settings.
        seed: the run's seed.
        models: per model id: its layout facts (:class:`WindowSource`).

    Returns:
        A batch of windows with views and scales.
    """
    from geosane.errors import GeoSANEError
    from geosane.storage import tokens_sha256

    out: dict[str, list[np.ndarray]] = {}
    for i, model in enumerate(str(m) for m in block["id"]):
        source = models[model]
        values = np.asarray(block["tokens"][i], dtype=np.float32)
        valid = np.asarray(block["valid"][i], dtype=np.int32)
        positions = np.asarray(block["positions"][i], dtype=np.int32)
        if tokens_sha256(values, valid, positions) != block["tokens_sha256"][i]:
            raise GeoSANEError(
                f"model {model}: its tokens do not match what was written (data file {', '.join(source.files)}); "
                "`geosane collection verify URL` lists every bad model"
            )
        tokens, positions = values.reshape(len(valid), -1), positions.reshape(-1, 3).astype(np.int64)
        rng = np.random.default_rng([seed, zlib.crc32(model.encode()), len(tokens), next(PASSES)])
        if views.permute_hidden_units and source.hidden:
            tokens = permute_hidden_units(tokens, source.hidden, source.mode, rng)
        starts = window_starts(len(tokens), views, rng)
        windows = cut_windows(tokens, positions, valid, starts, views.window)
        shifted = None
        if views.shift:
            later = shifted_starts(starts, len(tokens), views, rng)
            shifted = cut_windows(tokens, positions, valid, later, views.window)
        windows = make_views(windows, views, rng, shifted)
        windows["mean"] = np.full(len(windows["tokens"]), source.mean, dtype=np.float32)
        windows["std"] = np.full(len(windows["tokens"]), source.std, dtype=np.float32)
        for key, value in windows.items():
            out.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in out.items()}
