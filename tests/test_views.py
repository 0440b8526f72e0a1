from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import timm
import torch

from geosane.errors import GeoSANEError
from geosane.storage import tokens_sha256
from geosane.tokenizer import TokenizerConfig, detokenize, prefix_mask, tokenize
from geosane.views import (
    ViewConfig,
    WindowSource,
    cut_windows,
    halo_windows,
    hidden_units,
    make_views,
    model_windows,
    permute_hidden_units,
    shifted_starts,
    window_starts,
)


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


def test_training_windows_stay_inside_the_model() -> None:
    starts = window_starts(100, ViewConfig(window=10), np.random.default_rng(0))
    assert len(starts) == 10 and starts.min() >= 0 and starts.max() <= 90
    assert np.array_equal(window_starts(3, ViewConfig(window=10), np.random.default_rng(0)), [0])


@pytest.mark.parametrize("num_tokens", [1, 7, 16, 17, 100])
def test_halo_windows_put_every_token_in_exactly_one_core(num_tokens: int) -> None:
    core, halo = 4, 2
    starts, cores = halo_windows(num_tokens, core, halo)
    in_cores = np.concatenate([np.arange(c, min(c + core, num_tokens)) for c in cores])
    assert np.array_equal(in_cores, np.arange(num_tokens))
    # a window holds its core, stays inside the model when it can, and gives the core its halo where there is room
    for start, first in zip(starts, cores, strict=True):
        assert start <= first and min(first + core, num_tokens) <= start + core + 2 * halo
        assert start == 0 or start + core + 2 * halo <= num_tokens
        if halo <= first and first + core + halo <= num_tokens:  # away from the ends: context on both sides
            assert start == first - halo


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


# ------------------------------------------------------------------------------ hidden-unit permutation


@pytest.mark.parametrize("mode", ["dense", "per-channel"])
@pytest.mark.parametrize("arch", ["test_vit", "test_convnext", "test_resnet", "test_efficientnet"])
def test_permuted_hidden_units_compute_the_same_function(arch: str, mode: str) -> None:
    model = timm.create_model(arch, num_classes=10).eval()
    tokens = tokenize(model.state_dict(), TokenizerConfig(token_size=64, mode=mode))
    groups = hidden_units(tokens.layout)
    permuted = permute_hidden_units(tokens.tokens.numpy(), groups, mode, np.random.default_rng(0))
    twin = timm.create_model(arch, num_classes=10).eval()
    twin.load_state_dict(detokenize(torch.from_numpy(permuted), tokens.layout, tokens.kept))
    images = torch.randn(2, 3, *model.default_cfg["input_size"][1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(twin(images), model(images), atol=1e-5)
    if arch in ("test_vit", "test_convnext"):  # their blocks' MLPs are timm's Mlp: fc1 -> GELU -> fc2
        assert len(groups) >= 2 and not np.array_equal(permuted, tokens.tokens.numpy())
    else:  # no fc1/fc2 pairs: left as they are
        assert groups == [] and np.array_equal(permuted, tokens.tokens.numpy())


def test_only_mlps_the_rule_knows_are_permuted() -> None:
    state = {
        "gated.fc1.weight": torch.randn(8, 3),
        "gated.fc2.weight": torch.randn(3, 4),  # fc1 twice as wide
        "stats.fc1.weight": torch.randn(4, 3),
        "stats.fc2.weight": torch.randn(3, 4),
        "stats.bn.running_mean": torch.zeros(4),  # something under the prefix the rule does not know
        "plain.fc1.weight": torch.randn(4, 3),
        "plain.fc1.bias": torch.randn(4),
        "plain.norm.weight": torch.ones(4),
        "plain.norm.bias": torch.zeros(4),
        "plain.fc2.weight": torch.randn(3, 4),
    }
    tokens = tokenize(state, TokenizerConfig(token_size=5))
    groups = hidden_units(tokens.layout)
    assert [g.size for g in groups] == [4] and len(groups[0].rows) == 2  # plain: fc1 (with bias) and norm
    permuted = detokenize(
        torch.from_numpy(permute_hidden_units(tokens.tokens.numpy(), groups, "dense", np.random.default_rng(2))),
        tokens.layout,
        tokens.kept,
    )
    order = [int(torch.nonzero((state["plain.fc1.weight"] == row).all(1))[0]) for row in permuted["plain.fc1.weight"]]
    assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
    assert torch.equal(permuted["plain.fc1.bias"], state["plain.fc1.bias"][order])
    assert torch.equal(permuted["plain.fc2.weight"], state["plain.fc2.weight"][:, order])
    assert all(torch.equal(permuted[k], state[k]) for k in state if not k.startswith("plain."))


def model_rows(models: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, WindowSource]]:
    """Collection rows of several models in one block, as ``read_lance`` hands them to ``model_windows``, and what
    the driver knows of each."""
    rows, sources = [], {}
    for n, (model, tokens) in enumerate(models.items()):
        valid = np.full(len(tokens), tokens.shape[1], dtype=np.int32)
        positions = np.stack([np.arange(len(tokens))] * 3, axis=1).astype(np.int32).reshape(-1)
        flat = tokens.reshape(-1).astype(np.float32)
        rows.append((model, flat, valid, positions, tokens_sha256(flat, valid, positions)))
        sources[model] = WindowSource(float(n), float(n + 1), "dense", [], [f"data/{model}.lance"])
    columns = ("id", "tokens", "valid", "positions", "tokens_sha256")
    return {c: np.array([r[i] for r in rows], dtype=object) for i, c in enumerate(columns)}, sources


def test_model_windows_are_cut_per_model_in_token_order() -> None:
    models = {
        "a": np.arange(40 * 3, dtype=np.float32).reshape(40, 3),
        "b": -np.arange(1, 25 * 3 + 1, dtype=np.float32).reshape(25, 3),
    }
    views = ViewConfig(window=8, noise=0.0)
    block, sources = model_rows(models)
    first = model_windows(block, views, seed=0, models=sources)
    second = model_windows(block, views, seed=0, models=sources)
    assert len(first["tokens"]) == round(40 / 8) + round(25 / 8)
    for window, positions, mean, std in zip(
        first["tokens"], first["positions"][:, :, 0], first["mean"], first["std"], strict=True
    ):
        name = "a" if window[0, 0] >= 0 else "b"
        assert np.array_equal(window, models[name][positions])  # consecutive tokens of one model, in order
        assert np.array_equal(positions, np.arange(positions[0], positions[0] + 8))
        assert (mean, std) == (sources[name].mean, sources[name].std), "each window carries its model's scale"
    assert not np.array_equal(first["positions"], second["positions"])  # every pass draws fresh windows


def test_model_windows_refuse_tokens_that_do_not_match_their_hash() -> None:
    block, sources = model_rows({"a": np.ones((10, 4), dtype=np.float32)})
    block["tokens"][0] = block["tokens"][0].copy()
    block["tokens"][0][17] = 2.0
    with pytest.raises(
        GeoSANEError, match=r"model a: its tokens do not match what was written \(data file data/a.lance\)"
    ):
        model_windows(block, ViewConfig(window=4), seed=0, models=sources)


def test_model_windows_come_from_the_permuted_twin() -> None:
    model = timm.create_model("test_vit", num_classes=10)
    tokens = tokenize(model.state_dict(), TokenizerConfig(token_size=64))
    values = tokens.tokens.numpy()
    block, sources = model_rows({"m": values})
    block["positions"][0] = tokens.positions.numpy().astype(np.int32).reshape(-1)
    block["valid"][0] = tokens.valid.numpy().astype(np.int32)
    block["tokens_sha256"][0] = tokens_sha256(block["tokens"][0], block["valid"][0], block["positions"][0])
    sources["m"] = replace(sources["m"], hidden=hidden_units(tokens.layout))
    views = ViewConfig(window=len(values), noise=0.0)  # one window: the whole model
    plain = model_windows(block, views, seed=0, models=sources)
    permuted = model_windows(block, replace(views, permute_hidden_units=True), seed=0, models=sources)
    assert np.array_equal(plain["tokens"][0], values)
    assert not np.array_equal(permuted["tokens"][0], values)
    assert np.array_equal(np.sort(permuted["tokens"][0], axis=None), np.sort(values, axis=None))  # same values
    assert np.array_equal(permuted["valid"], plain["valid"])


def test_shifted_views_are_other_windows_of_the_same_model_with_their_own_targets() -> None:
    tokens = np.arange(100 * 4, dtype=np.float32).reshape(100, 4) + 1
    positions = np.stack([np.arange(100)] * 3, axis=1)
    valid = np.full(100, 4)
    config = ViewConfig(window=16, noise=0.0, shift=0.25)
    rng = np.random.default_rng(0)
    starts = np.array([0, 40, 84])
    later = shifted_starts(starts, 100, config, rng)
    assert (np.abs(later - starts) <= 4).all() and (later >= 0).all() and (later <= 84).all()
    views = make_views(cut_windows(tokens, positions, valid, starts, 16), config, rng,
                       cut_windows(tokens, positions, valid, later, 16))  # fmt: skip
    assert np.array_equal(views["view1"], views["tokens"]) and np.array_equal(views["view2"], views["tokens2"])
    assert np.array_equal(views["positions2"][:, 0, 0], later) and np.array_equal(
        views["tokens2"][:, 0, 0], later * 4 + 1
    )
