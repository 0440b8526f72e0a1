from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geosane.config import make
from geosane.errors import GeoSANEError
from geosane.tokenizer import Layout, TokenizerConfig, detokenize, plan_layout, tokenize

from .helpers import TIMM_MODELS, assert_bit_exact

MODES = ["dense", "per-channel"]


def small_model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2, bias=False),
    )
    return model.state_dict()


@pytest.mark.parametrize("mode", MODES)
def test_dense_and_per_channel_cut_as_designed(mode: str) -> None:
    state = small_model_state()
    out = tokenize(state, TokenizerConfig(token_size=5, mode=mode))
    layers = {layer.name: layer for layer in out.layout.layers}
    # conv: 4 rows of 27 weights + 1 bias column = 28 values per row
    conv = layers["0.weight"]
    assert conv.bias == "0.bias" and conv.cols == 28
    assert conv.count == (math.ceil(4 * 28 / 5) if mode == "dense" else 4 * math.ceil(28 / 5))
    # BatchNorm weight [4] -> [4, 1] plus bias column; running stats are kept, not tokenized
    assert layers["1.weight"].cols == 2
    assert {k.name: k.reason for k in out.layout.kept} == {
        "1.running_mean": "normalization statistics",
        "1.running_var": "normalization statistics",
        "1.num_batches_tracked": "integer or boolean buffer",
    }
    # first conv row, bias included, is the start of the token stream
    first_row = torch.cat([state["0.weight"][0].reshape(-1), state["0.bias"][:1]])
    assert torch.equal(out.tokens.reshape(-1)[:28], first_row)
    if mode == "per-channel":
        # each row starts a fresh token: row 1 begins at token ceil(28/5)=6
        row1 = torch.cat([state["0.weight"][1].reshape(-1), state["0.bias"][1:2]])
        assert torch.equal(out.tokens[6].reshape(-1), row1[:5])
        assert out.mask[5].sum() == 28 - 5 * 5
    # positions: global index counts up, layer index per layer, within-layer restarts at each layer
    assert torch.equal(out.positions[:, 0], torch.arange(len(out.tokens)))
    linear = layers["3.weight"]
    assert out.positions[linear.start].tolist() == [linear.start, 2, 0]
    # the mask marks exactly the real values, the padding is zero
    assert out.mask.sum() == sum(t.numel() for n, t in state.items() if "running" not in n and "num_batches" not in n)
    assert torch.all(out.tokens[~out.mask] == 0)


@pytest.mark.parametrize("mode", MODES)
def test_kept_rules_cover_declared_tensors(mode: str) -> None:
    import timm

    torch.manual_seed(0)
    sd = timm.create_model("test_vit", pretrained=False, num_classes=3).state_dict()
    layout = tokenize(sd, TokenizerConfig(mode=mode)).layout
    kept = {entry.name: entry.reason for entry in layout.kept}
    assert kept["pos_embed"] == "position embedding"
    assert kept["cls_token"] == "special token"
    tokenized = {layer.name for layer in layout.layers} | {layer.bias for layer in layout.layers if layer.bias}
    assert "blocks.0.attn.qkv.weight" in tokenized and "blocks.0.attn.qkv.bias" in tokenized
    assert set(kept) | tokenized == set(sd) and not set(kept) & tokenized


def test_swin_relative_position_tables_are_kept() -> None:
    import timm

    sd = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
    kept = {entry.name: entry.reason for entry in plan_layout(sd).kept}
    tables = [n for n in sd if "relative_position" in n]
    assert tables and all(kept[n] == "relative position table" for n in tables)


@pytest.mark.parametrize("in_chans", [3, 13])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_round_trip_is_bit_exact(name: str, in_chans: int) -> None:
    import timm

    torch.manual_seed(0)
    sd = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=10).state_dict()
    for mode in MODES:
        out = tokenize(sd, TokenizerConfig(mode=mode))
        assert out.tokens.shape == (out.layout.num_tokens, 230)
        assert_bit_exact(sd, detokenize(out.tokens, Layout.from_dict(out.layout.to_dict()), out.kept))


def test_detokenize_rejects_wrong_shapes() -> None:
    out = tokenize(small_model_state(), TokenizerConfig(token_size=7))
    with pytest.raises(GeoSANEError, match="layout expects"):
        detokenize(out.tokens[:-1], out.layout, out.kept)
    with pytest.raises(GeoSANEError, match="1.running_mean.*missing"):
        detokenize(out.tokens, out.layout, {})


def test_config_is_validated() -> None:
    with pytest.raises(GeoSANEError, match="token_size"):
        TokenizerConfig(token_size=0)
    with pytest.raises(GeoSANEError, match="TokenizerConfig: mode: Input should be 'dense' or 'per-channel'"):
        make(TokenizerConfig, mode="sparse")
    with pytest.raises(GeoSANEError, match="TokenizerConfig: token_size: Input should be a valid integer"):
        make(TokenizerConfig, token_size="many")


# --------------------------------------------------------------------------------------- fuzzing

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]
SUFFIXES = ["weight", "bias", "running_mean", "pos_embed", "gamma", "in_proj_weight", "in_proj_bias"]


@st.composite
def state_dicts(draw) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sd: dict[str, torch.Tensor] = {}
    for i in range(count):
        prefix = draw(st.sampled_from(["", "layer", "blocks.0.attn", "m"]))
        suffix = draw(st.sampled_from(SUFFIXES))
        name = f"{prefix}{i}.{suffix}" if prefix else f"{i}.{suffix}"
        if suffix.endswith("bias") and draw(st.booleans()) and i > 0:
            # make it the bias of the previous weight, if there is one
            previous = list(sd)[-1]
            if previous.endswith("weight") and sd[previous].dim() >= 1:
                name = previous[: -len("weight")] + "bias"
                shape = (sd[previous].shape[0],)
            else:
                shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
        else:
            shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(DTYPES))
        if dtype.is_floating_point:
            # random finite bit patterns: exactness must hold for every value, not just "nice" ones
            value = torch.randn(shape, generator=generator, dtype=torch.float64).mul(1e3).to(dtype)
        elif dtype == torch.bool:
            value = torch.randint(0, 2, shape, generator=generator).bool()
        else:
            value = torch.randint(-100, 100, shape, generator=generator, dtype=dtype)
        sd[name] = value
    return sd


@settings(max_examples=150, deadline=None)
@given(sd=state_dicts(), token_size=st.integers(1, 40), mode=st.sampled_from(MODES))
def test_fuzzed_state_dicts_round_trip(sd: dict[str, torch.Tensor], token_size: int, mode: str) -> None:
    out = tokenize(sd, TokenizerConfig(token_size=token_size, mode=mode))
    n = out.layout.num_tokens
    assert out.tokens.shape == (n, token_size) and out.mask.shape == (n, token_size) and out.positions.shape == (n, 3)
    # every tokenized value appears exactly once: mask count equals tokenized numel
    tokenized = sum(
        sd[layer.name].numel() + (sd[layer.bias].numel() if layer.bias else 0) for layer in out.layout.layers
    )
    assert int(out.mask.sum()) == tokenized
    assert torch.all(out.tokens[~out.mask] == 0), "padding must be zero"
    # tokens never cross layers
    for layer in out.layout.layers:
        assert torch.all(out.positions[layer.start : layer.start + layer.count, 1] == out.layout.layers.index(layer))
    assert_bit_exact(sd, detokenize(out.tokens, Layout.from_dict(out.layout.to_dict()), out.kept))
