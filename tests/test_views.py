from __future__ import annotations

import numpy as np

from geosane.views import ViewConfig, cut_windows, make_views, prefix_mask, window_starts


def model_tokens(n: int = 10, size: int = 5):
    tokens = np.arange(n * size, dtype=np.float32).reshape(n, size) + 1
    positions = np.stack([np.arange(n), np.arange(n) // 4, np.arange(n) % 4], axis=1)
    valid = np.full(n, size)
    valid[-1] = 2
    tokens[-1, 2:] = 0
    return tokens, positions, valid


def test_windows_are_consecutive_and_padded_when_short() -> None:
    tokens, positions, valid = model_tokens()
    windows = cut_windows(tokens, positions, valid, np.array([0, 6]), window=4)
    assert np.array_equal(windows["tokens"][1], tokens[6:10])
    assert np.array_equal(windows["positions"][1, :, 0], [6, 7, 8, 9])
    short = cut_windows(tokens[:3], positions[:3], valid[:3], np.array([0]), window=4)
    assert np.array_equal(short["valid"][0], [5, 5, 5, 0]) and not short["tokens"][0, 3].any()


def test_validation_tiling_covers_every_token() -> None:
    config = ViewConfig(window=4)
    starts = window_starts(10, config, None)
    covered = set(np.concatenate([np.arange(s, s + 4) for s in starts]).tolist())
    assert covered == set(range(10)) and starts.max() == 6
    assert np.array_equal(window_starts(3, config, None), [0])
    random = window_starts(100, ViewConfig(window=10), np.random.default_rng(0))
    assert len(random) == 10 and random.max() <= 90


def test_views_differ_but_keep_padding_empty() -> None:
    tokens, positions, valid = model_tokens()
    batch = cut_windows(tokens, positions, valid, np.array([6]), window=4)
    views = make_views(batch, ViewConfig(window=4, noise=0.1, erase_probability=0.0), np.random.default_rng(0))
    mask = prefix_mask(batch["valid"], 5)
    assert not np.allclose(views["view1"], views["view2"])
    assert not views["view1"][~mask].any()
    ratio = views["view1"][mask] / batch["tokens"][mask]
    assert 0.5 < ratio.min() and ratio.max() < 1.5 and abs(ratio.mean() - 1) < 0.05
    erased = make_views(batch, ViewConfig(window=4, erase_probability=1.0), np.random.default_rng(0))
    assert not erased["view1"].any()
