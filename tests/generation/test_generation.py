"""Generation: every prompt architecture loads strictly and runs, seeds decide the weights, anchors come from the
collection (also for smaller prompts and other band counts), and bad input fails before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import geosane
from geosane.autoencoder import Autoencoder, AutoencoderConfig, Latents
from geosane.collection import Collection, sources
from geosane.errors import GeoSANEError
from geosane.generation import (
    RANKINGS,
    make_ready,
    parse_query,
    prepare,
    reestimate_batchnorm,
    sample_latents,
    write_generated,
)
from geosane.scale import Scale
from geosane.tokenizer import TokenizerConfig, detokenize, tokenize

from ..helpers import assert_bit_exact

TOKEN_SIZE = 230
PROMPTS = ["vit_small_patch16_224", "swin_tiny_patch4_window7_224", "resnet18", "mobilenetv3_large_100"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained autoencoder on disk: generation's plumbing does not depend on how well it was trained."""
    torch.manual_seed(0)
    url = str(tmp_path_factory.mktemp("autoencoder"))
    Autoencoder(AutoencoderConfig(token_size=TOKEN_SIZE, window=32), {"step": 0}).save(url)
    return url


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Two EuroSAT-tagged test_resnet lineages and a MobileNetV3 larger than the lightweight prompt."""
    collection = Collection(str(tmp_path_factory.mktemp("collection")))
    found = []
    for seed in (0, 1):
        source = sources.load(f"timm:test_resnet?num_classes=10&seed={seed}")
        source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet", "seed": str(seed)}
        found.append(source)
    found.append(sources.load("timm:mobilenetv3_large_100?num_classes=10"))
    collection.add(found, TokenizerConfig(token_size=TOKEN_SIZE), progress=False)
    return collection


@pytest.mark.parametrize("in_chans", [3, 13])
@pytest.mark.parametrize("arch", PROMPTS)
def test_generated_prompts_load_strictly_and_run(autoencoder: str, arch: str, in_chans: int) -> None:
    (generated,) = geosane.generate(autoencoder, f"timm:{arch}?in_chans={in_chans}&num_classes=10", candidates=1)
    fresh = timm.create_model(arch, in_chans=in_chans, num_classes=10)
    fresh.load_state_dict(generated.state_dict, strict=True)
    # the decoded weights replaced the prompt's: not one tokenized tensor is the prompt's random initialization
    prompt = sources.load(f"timm:{arch}?in_chans={in_chans}&num_classes=10&seed=0").state_dict
    conv = next(k for k, v in prompt.items() if v.dim() == 4 or k.endswith("qkv.weight"))
    assert not torch.equal(generated.state_dict[conv], prompt[conv])
    with torch.no_grad():
        out = generated.model(torch.randn(2, in_chans, 224, 224))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert generated.card["prompt"]["arch"] == arch and generated.card["prompt"]["in_chans"] == in_chans


def test_the_seed_decides_the_weights(autoencoder: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        (generated,) = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", seed=seed, bandwidth=0.5)
        return generated.state_dict

    first, again, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_sampling_stays_with_one_anchor_per_candidate() -> None:
    """``joint`` moves one anchor; ``token`` takes each token from one anchor; ``individual`` mixes per value."""
    positions = torch.zeros(50, 3, dtype=torch.int64)
    base = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    anchors = [Latents(base + a, positions, Scale(torch.tensor(float(a)), torch.tensor(1.0))) for a in (0, 10)]
    generator = torch.Generator().manual_seed(0)
    joint, chosen = sample_latents(anchors, "joint", 0.0, generator)
    assert torch.equal(joint.latents().values, anchors[chosen].values) and joint.scale is anchors[chosen].scale
    token, _ = sample_latents(anchors, "token", 0.0, generator)
    offset = (token.values - base).round()  # 0 or 10 per token, the same for all of a token's dimensions
    assert (offset == offset[:, :1]).all() and set(offset[:, 0].tolist()) == {0.0, 10.0}
    individual, _ = sample_latents(anchors, "individual", 0.0, generator)
    offset = (individual.values - base).round()
    assert (offset != offset[:, :1]).any() and set(offset.flatten().tolist()) == {0.0, 10.0}
    spread, chosen = sample_latents(anchors, "joint", 0.5, generator)
    moved = spread.latents().values - anchors[chosen].values  # the kernel: about half of each dimension's spread
    assert 0.3 < float(moved.std() / base.std()) < 0.7


@pytest.mark.parametrize("rows", [1, 5, 1023, 1025, 3000])
@pytest.mark.parametrize("width", [1, 3, 16])
def test_a_joint_draw_read_in_pieces_is_one_draw(rows: int, width: int) -> None:
    """The noise comes a block of rows at a time as decoding reads (forward, overlapping, and once from the start
    again), and is the one ``randn(N, D)`` of the candidate's generator."""
    positions = torch.zeros(rows, 3, dtype=torch.int64)
    anchor = Latents(torch.randn(rows, width), positions, Scale(torch.tensor(0.0), torch.tensor(1.0)))
    reference = torch.Generator().manual_seed(5)
    torch.randint(1, (1,), generator=reference)  # sample_latents picks the anchor first
    spread = anchor.values.std(dim=0) if rows > 1 else torch.ones(width)
    expected = anchor.values + torch.randn(rows, width, generator=reference) * spread * 0.2
    draw, _ = sample_latents([anchor], "joint", 0.2, torch.Generator().manual_seed(5))
    lengths = torch.Generator().manual_seed(7)
    pieces, first = [], 0
    while first < rows:
        last = min(rows, first + int(torch.randint(1, 700, (1,), generator=lengths)))
        low = max(0, first - 4)
        pieces.append(draw.rows(low, last)[0][first - low :])
        first = last
    assert torch.equal(torch.cat(pieces), expected)
    assert torch.equal(draw.rows(0, rows)[0], expected)


def test_generation_streams_the_weights_of_the_whole_model_path(autoencoder: str) -> None:
    """Encoding from the weights, drawing as decoding reads and decoding into the task model give, to the bit, what
    tokenize -> encode -> one draw -> decode -> detokenize -> load gives."""
    settings = {"candidates": 2, "top_k": 2, "seed": 4, "bandwidth": 0.3}
    generated = geosane.generate(autoencoder, "timm:test_vit?num_classes=10", **settings)
    plan, _ = prepare(autoencoder, "timm:test_vit?num_classes=10", **settings)
    tokens = tokenize(plan.anchors[0].state_dict, plan.autoencoder.tokenizer)
    latents = plan.autoencoder.encode(tokens)
    for index, candidate in enumerate(generated):
        generator = torch.Generator().manual_seed(4 * 1_000_003 + index)
        torch.randint(1, (1,), generator=generator)  # the candidate's anchor: there is one
        drawn, _ = sample_latents([latents], "joint", 0.3, generator)
        weights = detokenize(plan.autoencoder.decode(drawn.latents()), tokens.layout, tokens.kept)
        model, _ = make_ready(plan, weights, candidate.card["candidate"])
        assert_bit_exact(model.state_dict(), candidate.state_dict)


def test_decoding_with_gradients_is_decoding() -> None:
    """The latent search's decoder pass (all windows in one batch, autograd on) computes what ``decode`` does."""
    from geosane.generation.search import decode_with_grad

    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig.named("tiny", token_size=23, window=16, batch_tokens=64)).eval()
    torch.manual_seed(1)
    latents = autoencoder.encode(tokenize(timm.create_model("test_resnet").state_dict(), autoencoder.tokenizer))
    values = latents.values.clone().requires_grad_(True)
    decoded = decode_with_grad(autoencoder, latents, values)
    assert torch.allclose(decoded, autoencoder.decode(latents), atol=1e-5, rtol=1e-4)
    (gradient,) = torch.autograd.grad(decoded.square().sum(), [values])
    assert gradient.abs().sum() > 0 and all(p.grad is None for p in autoencoder.parameters())


def test_a_latent_search_follows_the_selection_loss(autoencoder: str, shared: Path) -> None:
    """A few steps lower the loss that ranks candidates and move the weights; the card records the labelled images
    and the time it spent; without target data it is refused."""
    settings = {"anchors": "prompt", "data": "eurosat_rgb", "data_root": str(shared / "data"), "seed": 2}
    (plain,) = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", candidates=1, **settings)
    (searched,) = geosane.generate(
        autoencoder, "timm:test_resnet?num_classes=10", candidates=1, search_steps=3, search_lr=0.02, **settings
    )
    search = searched.card["search"]
    assert search["steps"] == 3 and search["images"] == len(load_selection(settings)) and search["seconds"] > 0
    assert search["loss"][1] < search["loss"][0]
    assert any(not torch.equal(v, plain.state_dict[k]) for k, v in searched.state_dict.items())
    assert "search" not in plain.card
    with pytest.raises(GeoSANEError, match="search_steps needs target data"):
        geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", search_steps=2)


def load_selection(settings: dict) -> torch.Tensor:
    plan, _ = prepare(
        geosane.Autoencoder(AutoencoderConfig(token_size=TOKEN_SIZE)), "timm:test_resnet?num_classes=10", **settings
    )
    return plan.target.selection_x


def test_token_sampling_across_lineages_warns(
    autoencoder: str, collection: Collection, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens of independently trained models do not line up (such mixes score near chance): mixing anchors of two
    lineages says so in the log; one anchor, or joint sampling, does not."""
    settings = {"anchors": "dataset=eurosat_rgb", "collection": collection.url, "candidates": 1}
    with caplog.at_level("WARNING", logger="geosane.generation.stage"):
        geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", sampling="token", **settings)
    assert "token sampling mixes 2 anchors of 2 lineages" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geosane.generation.stage"):
        geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
        geosane.generate(
            autoencoder, "timm:test_resnet?num_classes=10", sampling="token", **{**settings, "anchors": "seed=0"}
        )
    assert "mixes" not in caplog.text


def test_anchors_from_a_query_and_the_card(autoencoder: str, collection: Collection, tmp_path: Path) -> None:
    generated = geosane.generate(
        autoencoder,
        "timm:test_resnet?in_chans=13&num_classes=10",
        anchors="dataset=eurosat_rgb",
        collection=collection.url,
        candidates=3,
        top_k=2,
        seed=3,
    )
    assert [g.card["rank"] for g in generated] == [1, 2]
    card = generated[0].card
    assert {a["name"] for a in card["anchors"]} == {"test_resnet"} and len(card["anchors"]) == 2
    assert all(a["fitted"] == "input convolution adapted" for a in card["anchors"])  # 3-band anchors, 13-band prompt
    assert card["head"] == "re-initialized (seeded)" and card["selection"] == "not ranked: no target data"
    assert card["collection"] == {"url": collection.url, "version": collection.version} and card["seed"] == 3
    written = write_generated(generated, str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model-1.json",
        "model-1.md",
        "model-1.safetensors",
        "model-2.json",
        "model-2.md",
        "model-2.safetensors",
    ]
    from safetensors.torch import load_file

    assert torch.equal(load_file(written[0])["fc.weight"], generated[0].state_dict["fc.weight"])
    assert "input convolution adapted" in (tmp_path / "out/model-1.md").read_text()


def test_a_lightweight_prompt_generates_from_a_larger_collection_model(
    autoencoder: str, collection: Collection
) -> None:
    (generated,) = geosane.generate(
        autoencoder,
        "timm:mobilenetv3_large_075?num_classes=10",
        anchors="family=mobilenetv3",
        collection=collection.url,
    )
    (anchor,) = generated.card["anchors"]
    assert anchor["name"] == "mobilenetv3_large_100" and "cropped" in anchor["fitted"]
    small = timm.create_model("mobilenetv3_large_075", num_classes=10)
    small.load_state_dict(generated.state_dict, strict=True)
    assert sum(p.numel() for p in small.parameters()) < anchor_parameters(collection, "mobilenetv3_large_100")


def anchor_parameters(collection: Collection, name: str) -> int:
    return collection.record(name).num_params


def test_bad_input_is_refused_before_anything_is_written(
    autoencoder: str, collection: Collection, tmp_path: Path, shared: Path
) -> None:
    with pytest.raises(GeoSANEError, match="unknown timm model 'resnet_nonexistent'"):
        geosane.generate(autoencoder, "timm:resnet_nonexistent")
    with pytest.raises(GeoSANEError, match=r"does not fit|fits the prompt"):
        geosane.generate(autoencoder, "timm:resnet18", anchors="dataset=eurosat_rgb", collection=collection.url)
    with pytest.raises(GeoSANEError, match=r"no model .* matches \{'dataset': 'bigearthnet'\}.*eurosat_rgb"):
        geosane.generate(autoencoder, "timm:test_resnet", anchors="dataset=bigearthnet", collection=collection.url)
    data = str(shared / "data")
    with pytest.raises(GeoSANEError, match="eurosat_rgb has 3 bands, the prompt test_resnet takes in_chans=13"):
        geosane.generate(autoencoder, "timm:test_resnet?in_chans=13", data="eurosat_rgb", data_root=data)
    with pytest.raises(GeoSANEError, match="eurosat_rgb has 10 classes, the prompt test_resnet num_classes=1000"):
        geosane.generate(autoencoder, "timm:test_resnet", data="eurosat_rgb", data_root=data)
    other = str(tmp_path / "ae64")
    Autoencoder(AutoencoderConfig(token_size=64, window=32)).save(other)
    with pytest.raises(GeoSANEError, match=r"tokens of size 64 \(dense\), the collection .* holds tokens of size 230"):
        geosane.generate(other, "timm:test_resnet", anchors="dataset=eurosat_rgb", collection=collection.url)
    with pytest.raises(GeoSANEError, match="expected key=value"):
        parse_query("family")


def test_batchnorm_is_re_estimated_in_train_mode_without_touching_weights() -> None:
    """Images come class by class (as datasets list them); the statistics must be the whole set's, not an average
    of within-class ones."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    classes = [torch.randn(16, 3, 32, 32) + shift for shift in (-6.0, 0.0, 6.0)]  # three classes, far apart
    images = torch.cat(classes)  # three equal batches: their cumulative average is the mean
    layers = reestimate_batchnorm(model, images, batch=16)
    assert layers == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    first = model.conv1[0] if isinstance(model.conv1, torch.nn.Sequential) else model.conv1
    with torch.no_grad():
        outputs = first(images)  # what the first BatchNorm sees
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(bn.running_mean, outputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    whole = outputs.var(dim=(0, 2, 3))
    within = torch.stack([first(c).var(dim=(0, 2, 3)) for c in classes]).mean(0).detach()
    assert torch.allclose(bn.running_var, whole, rtol=0.25)  # the whole set's variance ...
    assert (bn.running_var > 1.5 * within).float().mean() > 0.5  # ... not the classes' own


@pytest.mark.parametrize(
    ("task", "dataset", "in_chans"), [("segmentation", "cloudmask", 6), ("detection", "neon_trees", 3)]
)
def test_generated_backbones_plug_into_task_models_on_real_data(
    autoencoder: str, task: str, dataset: str, in_chans: int, shared: Path
) -> None:
    """The generated backbone under a new task head; BatchNorm re-estimated on the target's real images (NEON's come
    in different sizes); segmentation and detection candidates rank by a per-pixel nearest-class-mean mIoU on the
    selection split (detection: its boxes filled, on chips), and the card says so."""
    data = geosane.datasets.get(dataset, str(shared / "data"))
    (generated,) = geosane.generate(
        autoencoder, f"timm:test_resnet?in_chans={in_chans}", task=task, data=dataset, data_root=str(shared / "data")
    )
    card = generated.card
    assert card["task"] == task and "re-estimated in train mode" in card["batchnorm"]
    assert card["selection"]["ranked_by"] == RANKINGS[task] and 0 < card["selection"]["score"] <= 1
    model = generated.model
    assert model.training is False
    samples = data.load("test", limit=1)
    with torch.no_grad():
        if task == "segmentation":
            out = model(samples.x)
            assert out.shape == (1, data.num_classes, *samples.x.shape[-2:]) and torch.isfinite(out).all()
        else:
            (detections,) = model([samples.x[0]])
            assert set(detections) == {"boxes", "labels", "scores"} and torch.isfinite(detections["boxes"]).all()
    # the generated backbone weights are in the task model, and its BatchNorm statistics are the target's
    prompt = timm.create_model("test_resnet", in_chans=in_chans)
    backbone = model.backbone
    assert not torch.equal(backbone.state_dict()["conv1.0.weight"], prompt.state_dict()["conv1.0.weight"])
    assert not torch.equal(backbone.state_dict()["bn1.running_var"], prompt.state_dict()["bn1.running_var"])


def test_candidates_run_as_ray_tasks_with_the_same_weights(autoencoder: str) -> None:
    """With a Ray cluster up, candidates are Ray tasks; seeded per candidate, they come out as in one process."""
    import ray

    settings = {"candidates": 3, "top_k": 3, "seed": 5, "bandwidth": 0.3}
    local = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = geosane.generate(autoencoder, "timm:test_resnet?num_classes=10", **settings)
    finally:
        ray.shutdown()
    assert {g.card["generated_by"] for g in local} == {"this process"}
    assert {g.card["generated_by"] for g in remote} == {"Ray tasks"}
    for one, other in zip(local, remote, strict=True):
        assert one.card["candidate"] == other.card["candidate"]
        assert all(torch.equal(one.state_dict[k], other.state_dict[k]) for k in one.state_dict)


def test_an_anchor_keeps_its_classifier_where_it_fits_the_prompt() -> None:
    """A zoo model's trained classifier is what a generated model for the same classes decodes; for other classes
    the prompt's (fresh) classifier stands in."""
    from geosane.generation import Prompt, fit_to_prompt, head_keys

    anchor = sources.load("timm:test_resnet?num_classes=10&seed=1").state_dict
    for classes, expected in ((10, anchor), (5, None)):
        prompt_state = sources.load(f"timm:test_resnet?num_classes={classes}&seed=2").state_dict
        prompt = Prompt(
            "timm:test_resnet", "test_resnet", 3, classes, prompt_state, head_keys("test_resnet", prompt_state)
        )
        fitted, how = fit_to_prompt(anchor, prompt, in_chans=3)
        assert prompt.head == ("fc.weight", "fc.bias") and how == "as is"
        assert torch.equal(fitted["fc.weight"], (expected or prompt_state)["fc.weight"])
        assert torch.equal(fitted["conv1.0.weight"], anchor["conv1.0.weight"])


def test_rgb_filters_go_to_their_bands_in_a_multispectral_stem() -> None:
    from geosane.datasets.eurosat import EuroSATMS, EuroSATRGB
    from geosane.generation import band_mapped_input

    rgb, ms = list(EuroSATRGB.bands), list(EuroSATMS.bands)
    weight = torch.randn(8, 3, 3, 3)
    mapped = band_mapped_input(weight, rgb, ms)
    assert mapped is not None and mapped.shape == (8, 13, 3, 3)
    for channel, band in enumerate(rgb):  # B04, B03, B02 land where the 13-band data has them
        assert torch.equal(mapped[:, ms.index(band)], weight[:, channel])
    others = [i for i, band in enumerate(ms) if band not in rgb]
    assert not mapped[:, others].any()
    assert band_mapped_input(weight, ["Red", "Green", "Blue"], ms) is None  # names it cannot place: timm's adaptation


@pytest.mark.parametrize(("bands", "target"), [(3, 13), (6, 3), (6, 12), (13, 4)])
def test_an_input_convolution_adapts_to_any_band_count_keeping_its_response_to_a_constant_image(
    bands: int, target: int
) -> None:
    from geosane.generation import adapt_input

    torch.manual_seed(0)
    weight = torch.randn(8, bands, 3, 3)
    adapted = adapt_input(weight, target)
    assert adapted.shape == (8, target, 3, 3)
    before = torch.nn.functional.conv2d(torch.ones(1, bands, 5, 5), weight)
    after = torch.nn.functional.conv2d(torch.ones(1, target, 5, 5), adapted)
    if target % bands == 0 or bands >= target:  # exact when the bands repeat whole or fold onto fewer
        assert torch.allclose(before, after, atol=1e-5)


def test_a_segmentation_models_backbone_is_an_anchor_under_the_classifiers_names() -> None:
    import timm

    from geosane.generation import backbone_weights
    from geosane.tasks import create_model

    segmenter = create_model("test_resnet", "segmentation", 6, 3).state_dict()
    backbone = backbone_weights(segmenter)
    classifier = timm.create_model("test_resnet", in_chans=6, num_classes=3).state_dict()
    assert set(backbone) == set(classifier) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(backbone[k], segmenter[f"backbone.{k}"]) for k in backbone)
    assert backbone_weights(classifier) is classifier
