"""Streaming a model through the tokenizer and the autoencoder: a block of rows at a time, the same to the bit as the
whole-model functions."""

from __future__ import annotations

import pytest
import timm
import torch

from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.errors import GeoSANEError
from geosane.streaming import TokenReader, TokenWriter
from geosane.tokenizer import TokenizerConfig, detokenize, tokenize

from .helpers import assert_bit_exact

MODES = ["dense", "per-channel"]


def timm_state(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return timm.create_model(arch, num_classes=7).state_dict()


def ranges(n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Consecutive reads as halo windows make them: forward, overlapping, of uneven length."""
    out, first = [], 0
    while first < n:
        last = min(n, first + int(torch.randint(1, 400, (1,), generator=generator)))
        out.append((max(0, first - int(torch.randint(0, 9, (1,), generator=generator))), last))
        first = last
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
def test_a_reader_gives_the_rows_of_the_whole_tokens(arch: str, mode: str) -> None:
    state = timm_state(arch)
    config = TokenizerConfig(token_size=23, mode=mode)
    whole, reader = tokenize(state, config), TokenReader(state, config)
    assert reader.layout == whole.layout and reader.num_tokens == whole.num_tokens
    assert_bit_exact(whole.kept, reader.kept)
    for first, last in ranges(whole.num_tokens, torch.Generator().manual_seed(0)) + [(0, whole.num_tokens)]:
        values, positions, valid = reader.rows(first, last)
        assert torch.equal(values, whole.tokens[first:last]), (first, last)
        assert torch.equal(positions, whole.positions[first:last]) and torch.equal(valid, whole.valid[first:last])


@pytest.mark.parametrize("mode", MODES)
def test_a_writer_rebuilds_the_state_dict_or_fills_a_models_own_tensors(mode: str) -> None:
    state = timm_state("test_vit")
    tokens = tokenize(state, TokenizerConfig(token_size=23, mode=mode))
    writer = TokenWriter(tokens.layout, tokens.kept)
    for first, last in ranges(tokens.num_tokens, torch.Generator().manual_seed(1)):
        first = max(first, writer.next_row)  # a writer takes every row once, in order
        writer.write(first, tokens.tokens[first:last])
    assert_bit_exact(detokenize(tokens.tokens, tokens.layout, tokens.kept), writer.finish())

    torch.manual_seed(9)
    model = timm.create_model("test_vit", num_classes=7)
    head = {"head.weight", "head.bias"}
    targets = {k: v for k, v in model.state_dict().items() if k not in head}  # a new head is left out
    fresh_head = model.head.weight.detach().clone()
    into = TokenWriter(tokens.layout, tokens.kept, targets)
    into.write(0, tokens.tokens)
    written = into.finish()
    assert set(written) == set(targets) and all(written[k] is targets[k] for k in written)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in targets)
    assert torch.equal(model.head.weight, fresh_head)


def test_a_writer_names_what_goes_wrong() -> None:
    state = timm_state("test_resnet")
    tokens = tokenize(state, TokenizerConfig(token_size=23))
    layer = tokens.layout.layers[2]
    broken = tokens.tokens.clone()
    broken[layer.start, 0] = float("nan")
    with pytest.raises(GeoSANEError, match=rf"{layer.name!r} has 1 non-finite value"):
        TokenWriter(tokens.layout, tokens.kept).write(0, broken)
    writer = TokenWriter(tokens.layout, tokens.kept)
    writer.write(0, tokens.tokens[:5])
    with pytest.raises(GeoSANEError, match="out of order: expected row 5, got 6"):
        writer.write(6, tokens.tokens[6:9])
    with pytest.raises(GeoSANEError, match=f"stopped at row 5 of {tokens.num_tokens:,}"):
        writer.finish()
    kept = dict(tokens.kept)
    name = next(iter(kept))
    kept.pop(name)
    with pytest.raises(GeoSANEError, match=f"kept tensor {name!r}"):
        TokenWriter(tokens.layout, kept)
    targets = {k: torch.empty(v.shape) for k, v in state.items()} | {"extra.weight": torch.empty(3)}
    complete = TokenWriter(tokens.layout, tokens.kept, targets)
    complete.write(0, tokens.tokens)
    with pytest.raises(GeoSANEError, match=r"1 tensor\(s\) of the model were not decoded, e.g. \['extra.weight'\]"):
        complete.finish()


def test_encoding_and_decoding_a_streamed_model_are_the_whole_models_to_the_bit() -> None:
    """Several window groups per model (a small ``batch_tokens``), so the reads overlap at the halos."""
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig.named("tiny", token_size=23, window=16, batch_tokens=64)).eval()
    state = timm_state("test_vit")
    whole, reader = tokenize(state, autoencoder.tokenizer), TokenReader(state, autoencoder.tokenizer)
    expected, streamed = autoencoder.encode(whole), autoencoder.encode(reader)
    assert torch.equal(expected.values, streamed.values) and streamed.positions == whole.layout  # its positions' rule
    assert torch.equal(streamed.rows(0, whole.num_tokens)[1], whole.positions)
    assert torch.equal(expected.scale.mean, streamed.scale.mean) and torch.equal(expected.scale.std, streamed.scale.std)
    writer = TokenWriter(reader.layout, reader.kept)
    autoencoder.decode_rows(streamed, writer.write)
    assert_bit_exact(detokenize(autoencoder.decode(expected), whole.layout, whole.kept), writer.finish())
