"""The autoencoder: settings, network, the standardization rule, whole models in halo windows, save and load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

import geosane
from geosane.autoencoder import Autoencoder, AutoencoderConfig, normalized_error, num_parameters, sinusoidal
from geosane.autoencoder.losses import LossConfig, training_losses
from geosane.errors import GeoSANEError
from geosane.scale import Scale
from geosane.tokenizer import TokenizerConfig, Tokens, prefix_mask, tokenize
from geosane.views import halo_windows


def tiny(**overrides) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig.named("tiny", token_size=16, **overrides)).eval()


def model_tokens(arch: str = "test_vit", token_size: int = 16) -> Tokens:
    torch.manual_seed(1)
    return tokenize(timm.create_model(arch, num_classes=10).state_dict(), TokenizerConfig(token_size=token_size))


# ------------------------------------------------------------------------------ settings and network


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_shapes_per_named_size(name: str) -> None:
    config = AutoencoderConfig.named(name, window=8)
    model = Autoencoder(config)
    tokens = torch.randn(3, 8, config.token_size)
    positions = torch.randint(0, 1000, (3, 8, 3))
    latents, reconstruction, projection = model(tokens, positions)
    assert latents.shape == (3, 8, config.latent_dim)
    assert reconstruction.shape == tokens.shape and projection.shape == (3, config.projection_dim)


def test_geosane_size_has_the_published_shape() -> None:
    """d_model 1536, 16 + 16 pre-LN blocks, latent 128, window 512: the parameters counted layer by layer."""
    config = AutoencoderConfig.named("geosane")
    d, t, latent, window, projection = 1536, 230, 128, 512, 128
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d  # attn, MLP, norms
    expected = (
        32 * block
        + 2 * 2 * d  # the blocks and the encoder's and decoder's final norms
        + (t * d + d)
        + (d * latent + latent)
        + (latent * d + d)
        + (d * t + t)  # in and out of both halves
        + (window * latent * 4 * projection + 4 * projection)
        + (4 * projection * projection + projection)  # head
    )
    with torch.device("meta"):
        assert num_parameters(Autoencoder(config)) == expected  # 941,338,598


def test_positions_matter_and_are_not_aliased() -> None:
    model = tiny(window=4)
    tokens = torch.randn(1, 4, 16)
    a = model.encode_windows(tokens, torch.tensor([[[0, 0, 0], [1, 0, 1], [2, 1, 0], [3, 1, 1]]]))
    b = model.encode_windows(tokens, torch.tensor([[[0, 0, 0], [1, 0, 1], [2, 2, 0], [3, 2, 1]]]))
    assert not torch.allclose(a, b), "the layer coordinate must change the latents"
    embeddings = sinusoidal(torch.arange(5000), 64)
    assert torch.cdist(embeddings, embeddings).add(torch.eye(5000) * 10).min() > 1e-3


def test_blocks_start_from_their_own_weights() -> None:
    # built one by one, not deep-copied: equal starting blocks would waste depth (and break under zero.Init)
    model = tiny()
    first, second = model.encoder.layers[0], model.encoder.layers[1]
    assert not torch.equal(first.linear1.weight, second.linear1.weight)
    assert len(model.decoder.layers) == model.config.decoder_blocks


def test_settings_are_checked_and_halos_follow_the_window() -> None:
    tiny_size = AutoencoderConfig.named("tiny")
    assert (tiny_size.halo_tokens, tiny_size.core_tokens) == (8, 16)
    narrower = replace(tiny_size, window=16)  # halo and core follow the window unless they are set
    assert (narrower.halo_tokens, narrower.core_tokens) == (4, 8)
    assert AutoencoderConfig(window=16, halo=0).core_tokens == 16
    with pytest.raises(GeoSANEError, match="unknown autoencoder size 'huge'"):
        AutoencoderConfig.named("huge")
    with pytest.raises(GeoSANEError, match="d_model 60 is not divisible by 8 heads"):
        AutoencoderConfig(d_model=60, heads=8)
    with pytest.raises(GeoSANEError, match="core >= 1"):
        AutoencoderConfig(window=8, halo=4)
    with pytest.raises(GeoSANEError, match="unknown tokenizer mode 'sparse'"):
        AutoencoderConfig(mode="sparse")


# ------------------------------------------------------------------------------ the standardization rule


def test_scale_uses_the_real_values_only() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])  # 99: padding, never counted
    scale = Scale.of(values, torch.tensor([3, 1]))
    assert float(scale.mean) == pytest.approx(2.5)
    assert float(scale.std) == pytest.approx((5 / 3) ** 0.5)  # unbiased: (2.25 + 0.25 + 0.25 + 2.25) / 3
    assert torch.allclose(scale.restore(scale.apply(values)), values)


def test_normalized_error_by_hand() -> None:
    target = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    prediction = torch.tensor([[2.0, 2.0, 2.0, 100.0]])  # wrong by (1, 0, -1) in real values, and in the padding
    valid = torch.tensor([3])
    # the target's std is 1, so the error is mean((1, 0, 1)) = 2/3; scaling both sides changes nothing
    assert normalized_error(prediction, target, valid) == pytest.approx(2 / 3)
    assert normalized_error(prediction * 1000, target * 1000, valid) == pytest.approx(2 / 3)


def training_batch(scales: list[float], seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows of 8 tokens, window ``i`` from a model of weights about ``scales[i]`` in size, with its model's scale."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.stack([torch.randn(8, 16, generator=generator) * size for size in scales])
    valid = torch.full((len(scales), 8), 16)
    mean, std = tokens.mean(dim=(1, 2)), tokens.std(dim=(1, 2))
    positions = torch.randint(0, 99, (len(scales), 8, 3), generator=generator)
    return {
        "tokens": tokens,
        "valid": valid,
        "positions": positions,
        "view1": tokens * 1.1,
        "view2": tokens * 0.9,
        "mean": mean,
        "std": std,
    }


def test_each_training_window_is_standardized_by_its_own_models_scale() -> None:
    """Not by the batch: a window of small weights beside one of large weights is learned as if it were alone."""
    model = tiny(window=8)
    batch = training_batch([0.01, 10.0])
    together = training_losses(model, batch, LossConfig(), False)["reconstruction"].item()
    alone = [training_losses(model, {k: v[i : i + 1] for k, v in batch.items()}, LossConfig(), False) for i in range(2)]
    assert together == pytest.approx(sum(a["reconstruction"].item() for a in alone) / 2, rel=1e-5)
    # and so the loss does not change when a model's weights are scaled and shifted (its scale moves with them)
    moved = {
        **batch,
        **{k: batch[k] * 1000 + 7 for k in ("tokens", "view1", "view2")},
        "mean": batch["mean"] * 1000 + 7,
        "std": batch["std"] * 1000,
    }
    for term, value in training_losses(model, moved, LossConfig(), False).items():
        assert value.item() == pytest.approx(
            training_losses(model, batch, LossConfig(), False)[term].item(), rel=1e-4
        ), term


# ------------------------------------------------------------------------------ whole models in halo windows


def test_halo_windows_do_not_depend_on_how_many_go_through_at_once() -> None:
    model, tokens = tiny(), model_tokens()
    one_at_a_time = Autoencoder(replace(model.config, batch_tokens=1))
    one_at_a_time.load_state_dict(model.state_dict())
    one_at_a_time.eval()
    latents = model.encode(tokens)
    assert torch.equal(one_at_a_time.encode(tokens).values, latents.values)
    assert torch.equal(one_at_a_time.decode(latents), model.decode(latents))


def test_each_core_comes_from_its_place_in_its_own_window() -> None:
    model, tokens = tiny(window=8, halo=2, core=4), model_tokens()
    latents = model.encode(tokens).values
    scale = Scale.of(tokens.tokens, tokens.valid)
    standardized = scale.apply(tokens.tokens) * prefix_mask(tokens.valid, 16)
    starts, cores = halo_windows(len(standardized), core=4, halo=2)
    assert starts[0] == 0 and starts[5] == cores[5] - 2 and starts[-1] == len(standardized) - 8  # ends shift inwards
    for start, core in zip(starts[[0, 5, -1]], cores[[0, 5, -1]], strict=True):
        window = slice(start, start + 8)
        with torch.no_grad():
            out = model.encode_windows(standardized[window][None], tokens.positions[window][None])[0]
        kept = min(4, len(standardized) - core)
        assert torch.allclose(latents[core : core + kept], out[core - start : core - start + kept], atol=1e-5)


def test_a_token_is_context_only_for_the_windows_that_hold_it() -> None:
    """Swapping two values inside one token keeps the model's scale, so only the latents of cores whose window
    holds that token may change: the cores are kept, everything beyond a window's halo is out of its reach."""
    model, tokens = tiny(window=8, halo=2, core=4), model_tokens()
    changed = 50
    swapped = tokens.tokens.clone()
    swapped[changed, [0, 1]] = swapped[changed, [1, 0]]
    before = model.encode(tokens).values
    after = model.encode(Tokens(swapped, tokens.valid, tokens.positions, tokens.layout, tokens.kept)).values
    starts, cores = halo_windows(len(swapped), core=4, halo=2)
    reached = {int(c) + i for s, c in zip(starts, cores, strict=True) if s <= changed < s + 8 for i in range(4)}
    differs = set(torch.nonzero((after != before).any(1)).flatten().tolist())
    assert changed in differs and differs <= reached
    assert reached == set(range(48, 56)), "token 50 is in the windows of cores 48-51 and 52-55"


def test_a_model_shorter_than_a_window_is_one_padded_window() -> None:
    model = tiny(window=16, halo=4, core=8)
    short = Tokens(torch.randn(5, 16), torch.full((5,), 16), torch.stack([torch.arange(5)] * 3, 1), *model_layout(5))
    scale = Scale.of(short.tokens, short.valid)
    padded = torch.cat([scale.apply(short.tokens), torch.zeros(11, 16)])[None]
    positions = torch.cat([short.positions, torch.zeros(11, 3, dtype=torch.int64)])[None]
    with torch.no_grad():
        expected = model.encode_windows(padded, positions)[0, :5]
    assert torch.allclose(model.encode(short).values, expected, atol=1e-6)


def model_layout(num_tokens: int):
    """A layout of one dense layer of ``num_tokens`` tokens of 16 values (and no kept tensors)."""
    layout = tokenize({"w.weight": torch.zeros(num_tokens, 16)}, TokenizerConfig(token_size=16)).layout
    return layout, {}


def test_without_halos_windows_are_independent_tiles() -> None:
    model, tokens = tiny(window=8, halo=0, core=8), model_tokens("test_resnet")
    latents = model.encode(tokens)
    n = len(tokens.tokens) // 8 * 8
    scale = Scale.of(tokens.tokens, tokens.valid)
    with torch.no_grad():
        tiles = model.encode_windows(
            scale.apply(tokens.tokens[:n]).view(-1, 8, 16), tokens.positions[:n].view(-1, 8, 3)
        )
    assert torch.allclose(latents.values[:n], tiles.reshape(n, -1), atol=1e-6)


def test_decode_restores_the_scale_it_is_given() -> None:
    model, tokens = tiny(), model_tokens()
    latents = model.encode(tokens)
    unit = model.decode(replace(latents, scale=Scale(torch.tensor(0.0), torch.tensor(1.0))))
    assert torch.allclose(model.decode(latents), unit * latents.scale.std + latents.scale.mean, atol=1e-6)


def test_encoded_timm_models_decode_into_state_dicts_that_load_strictly() -> None:
    model = tiny()
    for arch in ("test_vit", "test_resnet", "test_efficientnet"):
        network = timm.create_model(arch, num_classes=10, in_chans=13)
        tokens = geosane.tokenize(network.state_dict(), model.tokenizer)
        rebuilt = geosane.detokenize(model.decode(model.encode(tokens)), tokens.layout, tokens.kept)
        network.load_state_dict(rebuilt, strict=True)
        assert all(torch.isfinite(v).all() for v in rebuilt.values() if v.is_floating_point())


def test_tokens_of_another_language_are_refused() -> None:
    with pytest.raises(
        GeoSANEError,
        match="tokens of size 230 in dense mode, but this autoencoder reads tokens of size 16 in dense mode",
    ):
        tiny().encode(model_tokens(token_size=230))


# ------------------------------------------------------------------------------ save and load


def test_save_and_load_round_trip_on_disk_and_s3(tmp_path: Path, bucket: str) -> None:
    model, tokens = tiny(), model_tokens()
    model.info = {"step": 7, "collection": "s3://somewhere"}
    for url in (str(tmp_path / "ae"), f"{bucket}/runs/ae"):
        model.save(url)
        loaded = Autoencoder.load(url)
        assert loaded.config == model.config and loaded.info == model.info and not loaded.training
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
        assert torch.equal(loaded.encode(tokens).values, model.encode(tokens).values)
    (tmp_path / "run" / "final").mkdir(parents=True)
    model.save(str(tmp_path / "run" / "final"))
    assert Autoencoder.load(str(tmp_path / "run")).config == model.config, "a run's final/ is found from the run"


def test_load_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="no autoencoder at .*load a checkpoint with step=N"):
        Autoencoder.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(GeoSANEError, match="not a GeoSANE autoencoder"):
        Autoencoder.load(str(tmp_path))
    tiny().save(str(tmp_path))
    record = json.loads((tmp_path / "config.json").read_text())
    record["autoencoder"]["d_model"] = 32
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(GeoSANEError, match="weights do not fit the autoencoder settings"):
        Autoencoder.load(str(tmp_path))
    record["autoencoder"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(GeoSANEError, match=r"unknown autoencoder setting\(s\) \['depth'\]"):
        Autoencoder.load(str(tmp_path))


def test_a_checkpoint_step_loads_its_weights_and_an_older_one_says_why_not(tmp_path: Path) -> None:
    """A ZeRO-0 checkpoint as training writes it: DeepSpeed's module weights and each rank's record."""
    from dataclasses import asdict

    from geosane.autoencoder import checkpoints

    model = tiny()
    folder = tmp_path / "run" / "checkpoint_000003"
    (folder / checkpoints.TAG).mkdir(parents=True)
    torch.save({"module": model.state_dict()}, folder / checkpoints.TAG / "mp_rank_00_model_states.pt")
    key = {"model": "tiny", "workers": 1, "zero_stage": 0}
    checkpoints.record(folder, 0, key, {"step": 30, "autoencoder": asdict(model.config)})
    loaded = Autoencoder.load(str(tmp_path / "run"), step=30)
    assert loaded.config == model.config and loaded.info["step"] == 30
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    (folder / "rank0.json").unlink()  # recorded afresh, as checkpoints were before they named their autoencoder
    checkpoints.record(folder, 0, key, {"step": 30})
    with pytest.raises(GeoSANEError, match="saved by an older GeoSANE, without its autoencoder settings"):
        Autoencoder.load(str(tmp_path / "run"), step=30)
