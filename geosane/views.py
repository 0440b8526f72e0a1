"""Windows of a model's token sequence and the augmented views the autoencoder learns from.

A window is ``W`` consecutive tokens (padded with empty tokens when a model is shorter). Two views of the same
window differ by multiplicative noise ``w * (1 + sigma * eps)`` on real values and optional random erasing of
whole tokens; the reconstruction target is always the clean window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ViewConfig:
    window: int = 32
    noise: float = 0.1
    erase_probability: float = 0.0  # chance that a token of a view is zeroed
    windows_per_model: float = 1.0  # random windows per model per epoch, relative to its length / window


def window_starts(num_tokens: int, config: ViewConfig, rng: np.random.Generator | None) -> np.ndarray:
    """Random window starts (training) or a fixed tiling (``rng=None``, validation)."""
    span = max(0, num_tokens - config.window)
    if rng is None:  # tile from the start; the last window ends at the last token
        return np.unique(np.arange(0, num_tokens, config.window).clip(max=span))
    count = max(1, int(round(config.windows_per_model * num_tokens / config.window)))
    return rng.integers(0, span + 1, size=count)


def cut_windows(
    tokens: np.ndarray, positions: np.ndarray, valid: np.ndarray, starts: np.ndarray, window: int
) -> dict[str, np.ndarray]:
    """``[K, W, T]`` tokens, ``[K, W, 3]`` positions and ``[K, W]`` real-value counts of windows at ``starts``."""
    n, size = tokens.shape
    index = starts[:, None] + np.arange(window)[None, :]
    inside = index < n
    index = np.minimum(index, n - 1)
    return {
        "tokens": np.where(inside[..., None], tokens[index], 0).astype(np.float32),
        "positions": np.where(inside[..., None], positions[index], 0).astype(np.int64),
        "valid": np.where(inside, valid[index], 0).astype(np.int64),
    }


def prefix_mask(valid: np.ndarray, token_size: int) -> np.ndarray:
    return np.arange(token_size) < valid[..., None]


def make_views(batch: dict[str, np.ndarray], config: ViewConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add two augmented views (``view1``, ``view2``) of each window in ``batch``."""
    tokens = batch["tokens"]
    mask = prefix_mask(batch["valid"], tokens.shape[-1])
    out = dict(batch)
    for name in ("view1", "view2"):
        view = tokens * (1 + config.noise * rng.standard_normal(tokens.shape, dtype=np.float32))
        if config.erase_probability:
            erased = rng.random(tokens.shape[:-1]) < config.erase_probability
            view = np.where(erased[..., None], 0, view)
        out[name] = np.where(mask, view, 0).astype(np.float32)
    return out
