"""The benchmark sweep: initializations, metrics, held-out checks, validation, and a real two-trial Tune sweep."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import geosane
from geosane.autoencoder import Autoencoder, AutoencoderConfig
from geosane.bench import (
    INITIALIZATIONS,
    BenchConfig,
    BenchTask,
    TaskData,
    TrialContext,
    build_initial_model,
    held_out_problems,
    prune_to,
    run_bench,
    score,
    write_results,
)
from geosane.collection import Collection, sources
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

SWEEPS = Path(__file__).parents[2] / "sweeps"
LIGHT = {"channels": [32, 32, 32, 48]}  # test_resnet at 40% of its parameters


@pytest.fixture(scope="module")
def data_root(shared: Path) -> str:
    return str(shared / "data")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An untrained autoencoder and a collection shaped like the bench's zoo: EuroSAT RGB classifiers (tagged as the
    zoo tags them, multispectral patches excluded) and a cloud-mask segmentation model with Landsat 5 held out."""
    from geosane.tasks import create_model

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    Autoencoder(AutoencoderConfig(token_size=32, window=32), {"step": 0}).save(str(root / "autoencoder"))
    found = []
    for seed in (0, 1):
        source = sources.load(f"timm:test_resnet?num_classes=10&seed={seed}")
        source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet", "exclude": "eurosat_ms", "train_limit": "64"}
        source.metrics = {"test_accuracy": 0.5 + seed / 10}
        found.append(source)
    torch.manual_seed(2)
    segmenter = create_model("test_resnet", "segmentation", 6, 3).state_dict()
    found.append(
        sources.ModelSource(
            name="test_resnet-cloudmask",
            uri="zoo:test/cloudmask",
            sha256=sources.content_sha256(segmenter),
            state_dict=segmenter,
            family="resnet",
            task="segmentation",
            in_chans=6,
            num_classes=3,
            tags={"dataset": "cloudmask?holdout=landsat5", "arch": "test_resnet"},
        )
    )
    torch.manual_seed(3)
    vit = create_model("test_vit", "classification", 3, 10, 64).state_dict()  # as the zoo builds it: for 64 pixels
    found.append(
        sources.ModelSource(
            name="test_vit-eurosat_rgb",
            uri="zoo:test/vit",
            sha256=sources.content_sha256(vit),
            state_dict=vit,
            family="vision_transformer",
            task="classification",
            in_chans=3,
            num_classes=10,
            tags={"dataset": "eurosat_rgb", "arch": "test_vit", "exclude": "eurosat_ms"},
        )
    )
    Collection(str(root / "collection")).add(found, TokenizerConfig(token_size=32), progress=False)
    return {"autoencoder": str(root / "autoencoder"), "collection": str(root / "collection"), "root": str(root)}


def config_for(workspace: dict[str, str], data_root: str, tasks: list[BenchTask], **settings) -> BenchConfig:
    return BenchConfig(
        name="test",
        autoencoder=workspace["autoencoder"],
        collection=workspace["collection"],
        tasks=tasks,
        seeds=[0],
        candidates=2,
        data_root=data_root,
        **settings,
    )


# ------------------------------------------------------------------------------------------- initializations

TASKS = {
    "eurosat_ms": BenchTask(
        data="eurosat_ms", arch="test_resnet", initializations=[], epochs=1, lr=0.003, anchors="dataset=eurosat_rgb"
    ),
    "cloudmask": BenchTask(
        data="cloudmask?holdout=landsat5",
        arch="test_resnet",
        initializations=[],
        epochs=1,
        lr=0.003,
        train_limit=16,
        test_limit=4,
        selection_limit=4,
        anchors="dataset=cloudmask?holdout=landsat5",
    ),
    "neon_trees": BenchTask(
        data="neon_trees", arch="test_resnet", initializations=[], epochs=1, lr=0.003, image_size=160, train_limit=1
    ),
    # a ViT prompt is built for the data's 64 pixels, as its anchors and its task model are
    "eurosat_ms-vit": BenchTask(
        data="eurosat_ms", arch="test_vit", initializations=[], epochs=1, lr=0.003, anchors="arch=test_vit"
    ),
    "eurosat_rgb-light": BenchTask(
        data="eurosat_rgb",
        arch="test_resnet",
        model_kwargs=LIGHT,
        initializations=[],
        epochs=1,
        lr=0.003,
        train_limit=64,
        test_limit=32,
        selection_limit=32,
        anchors="dataset=eurosat_rgb",
    ),
}
#: Which initialization runs on which task (pruning and distillation are for classification, the specialist exists
#: for cloud masks).
PAIRS = [
    *(
        (init, task)
        for init in ("generated", "scratch", "prompt")
        for task in ("eurosat_ms", "cloudmask", "neon_trees")
    ),
    *((init, task) for init in ("anchor", "decoded", "noised", "soup") for task in ("eurosat_ms", "cloudmask")),
    *((init, "eurosat_ms-vit") for init in ("generated", "noised")),
    ("foundation", "eurosat_ms"),
    ("specialist", "cloudmask"),
    *((init, "eurosat_rgb-light") for init in ("generated", "scratch", "pruned", "distilled")),
]


def test_every_initialization_is_covered() -> None:
    assert {init for init, _ in PAIRS} == set(INITIALIZATIONS)


@pytest.mark.parametrize(("init", "task"), PAIRS, ids=[f"{i}-{t}" for i, t in PAIRS])
def test_every_initialization_builds_a_model_that_runs_on_its_task(
    workspace: dict[str, str], data_root: str, init: str, task: str
) -> None:
    from geosane.bench import load_task

    spec = TASKS[task]
    config = config_for(workspace, data_root, [spec])
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config, spec, data, seed=0, lr=spec.lrs[0], collection=workspace["collection"])
    model, notes = build_initial_model(init, context)
    assert notes["source"] and notes["parameters"] == sum(p.numel() for p in model.parameters())
    value = score(model, data, "selection")
    assert 0.0 <= value <= 1.0
    model.eval()
    with torch.no_grad():
        if data.task == "detection":
            (found,) = model([data.test[0][0]])
            assert set(found) == {"boxes", "labels", "scores"}
        else:
            out = model(data.test[0][:2])
            assert out.shape[:2] == (2, data.num_classes)
            if data.task == "segmentation":
                assert out.shape[-2:] == data.test[0].shape[-2:]
    if task == "eurosat_rgb-light":  # the lightweight target really is small, whatever built it
        assert notes["parameters"] <= 0.5 * 373_658 * 1.1


@pytest.mark.parametrize("channels", [[32, 32, 32, 48], [32, 24, 24, 48]])
def test_pruned_models_have_the_target_parameter_count(channels: list[int]) -> None:
    import timm

    torch.manual_seed(0)
    large = timm.create_model("test_resnet", num_classes=10)
    target = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=10, channels=channels).parameters())
    small, ratio = prune_to(large, target, torch.randn(2, 3, 64, 64), [large.get_classifier()])
    count = sum(p.numel() for p in small.parameters())
    assert abs(count - target) <= 0.1 * target and 0 < ratio < 1
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 10)  # the classifier keeps its classes
    assert sum(p.numel() for p in large.parameters()) == 373_658  # the collection model itself is untouched


# ------------------------------------------------------------------------------------------- metrics


class Fixed(nn.Module):
    """A 'model' whose outputs are given: the inputs are its outputs (logits), or detections by image index."""

    def __init__(self, detections: list[dict[str, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, x):
        if self.detections is not None:
            return [self.detections[int(image.flatten()[0])] for image in x]
        return x


def task_data(task: str, x, y, classes: int) -> TaskData:
    return TaskData("hand", task, ["b"], [str(c) for c in range(classes)], (x, y), (x, y), (x, y))


def test_metrics_match_hand_computed_values() -> None:
    # top-1: argmax of [[2,1,0],[0,3,1],[1,0,4],[5,0,0]] is [0,1,2,0]; labels [0,2,2,1] -> 2 of 4
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 4], [5, 0, 0]])
    assert score(Fixed(), task_data("classification", logits, torch.tensor([0, 2, 2, 1]), 3), "test") == 0.5
    # mIoU over classes in prediction or target, 255 ignored: prediction [0,0,1,1], target [0,1,1,255]
    # class 0: 1/2, class 1: 1/2 (pixel 4 ignored), class 2: absent from both -> left out: mIoU 0.5
    prediction = torch.tensor([0, 0, 1, 1]).view(1, 1, 2, 2)
    maps = torch.nn.functional.one_hot(prediction, 3).permute(0, 4, 2, 3, 1).squeeze(-1).float()
    target = torch.tensor([0, 1, 1, 255]).view(1, 2, 2)
    assert score(Fixed(), task_data("segmentation", maps, target, 3), "test") == pytest.approx(0.5)
    # mAP@0.5: two trees; one found (score 0.9), one false box (0.8): precision 1 up to recall 0.5, so COCO's
    # 101-point interpolation gives 51/101
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    found = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
    }
    image = [torch.zeros(3, 8, 8)]
    value = score(Fixed([found]), task_data("detection", image, [boxes], 1), "test")
    assert value == pytest.approx(51 / 101, abs=1e-4)
    # a perfect detector scores 1
    perfect = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}
    assert score(Fixed([perfect]), task_data("detection", image, [boxes], 1), "test") == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- fair baselines


def test_prompt_picks_the_best_task_metric_never_a_count() -> None:
    """Every zoo record also records ``test_samples``; the prompt is the best *accuracy*, whatever the counts."""
    from types import SimpleNamespace

    from geosane.bench.initializations import prompt_record

    def zoo(name: str, accuracy: float, samples: int) -> SimpleNamespace:
        tags = {"arch": "test_resnet", "dataset": "eurosat_rgb?classes=0-4"}
        return SimpleNamespace(name=name, task="classification", tags=tags, metrics={"test_accuracy": accuracy,
                               "test_samples": samples})  # fmt: skip

    records = [zoo("s9-e3", 0.70, 2000), zoo("s1-e3", 0.91, 500), zoo("s5-e3", 0.85, 5000), zoo("s0-e2", 0.91, 10)]
    own = SimpleNamespace(**{**vars(zoo("own", 0.99, 1)), "tags": {"arch": "test_resnet", "dataset": "eurosat_ms"}})
    context = SimpleNamespace(
        records=lambda: [*records, own],  # a model of the task's own dataset is never the prompt
        data=SimpleNamespace(spec="eurosat_ms"),
        task=SimpleNamespace(arch="test_resnet"),
        collection="c",
    )
    assert prompt_record(context).name == "s0-e2"  # best accuracy; ties by name
    # a class-transfer task: models of the dataset's other classes are another dataset, its own classes are not
    context.data = SimpleNamespace(spec="eurosat_rgb?classes=5-9")
    own.tags = {"arch": "test_resnet", "dataset": "eurosat_rgb?classes=5-9"}
    assert prompt_record(context).name == "s0-e2"


def test_noise_and_soup_are_what_they_say() -> None:
    from geosane.bench.ablations import noise_like, soup_of
    from geosane.generation import weight_distance

    torch.manual_seed(0)
    weights = {"a": torch.randn(8, 4), "b": torch.randn(16), "n": torch.tensor(3)}
    noised = noise_like(weights, {"a": 0.1, "b": 0.02}, torch.Generator().manual_seed(1))
    for key, distance in {"a": 0.1, "b": 0.02}.items():  # each tensor at exactly its relative distance
        assert weight_distance({key: noised[key]}, {key: weights[key]}) == pytest.approx(distance, rel=1e-5)
    assert torch.equal(noised["n"], weights["n"])
    other = {"a": torch.zeros(8, 4), "b": torch.ones(16), "n": torch.tensor(5)}
    soup = soup_of([weights, other])
    assert torch.allclose(soup["a"], weights["a"] / 2) and torch.allclose(soup["b"], (weights["b"] + 1) / 2)
    assert soup["n"] == 3  # integer buffers: the first's


def test_anchor_based_baselines_share_generations_anchors_and_treatment(
    workspace: dict[str, str], data_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``anchor`` is the selection-best anchor; ``decoded`` is it through the autoencoder; ``noised`` moves every
    tensor of it as far (relative) as the trial's generated model moved from its own anchor; the head rule keeps
    the EuroSAT RGB classifiers' heads for EuroSAT-MS (the same ten classes by name)."""
    from geosane.bench import ablations, load_task
    from geosane.bench.ablations import best_anchor, generated_distances
    from geosane.generation import make_ready, weight_distance

    monkeypatch.setattr(ablations, "CHOICES", tmp_path / "choices")
    spec = TASKS["eurosat_ms"]
    config = config_for(workspace, data_root, [spec])
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config, spec, data, seed=1, lr=spec.lrs[0], collection=workspace["collection"])
    plan = context.generation_plan()
    assert plan.head_kept and len(plan.anchors) == 2
    scores = [make_ready(plan, a.state_dict, 0)[1]["selection_score"] for a in plan.anchors]
    index, _, info = best_anchor(plan)
    assert info["selection_score"] == max(scores) and scores[index] == max(scores)
    (remembered,) = (tmp_path / "choices").glob("*.json")  # the other seeds read the choice instead of scoring again
    assert json.loads(remembered.read_text())["best"] == index

    model, notes = build_initial_model("anchor", context)
    best = plan.anchors[index].state_dict
    weights = {k: v for k, v in best.items() if "running" not in k and "num_batches" not in k}  # BatchNorm re-estimated
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert notes["distance"] == 0.0

    distances, _, _ = generated_distances(plan)
    model, notes = build_initial_model("noised", context)
    mine = model.state_dict()
    for key, distance in distances.items():
        assert weight_distance({key: mine[key]}, {key: best[key]}) == pytest.approx(distance, rel=1e-4)
    assert "per-tensor distance" in notes["source"] and notes["distance"] > 0

    model, notes = build_initial_model("decoded", context)
    assert 0 < notes["distance"] < 10 and "encoded and decoded" in notes["source"]


def test_results_choose_learning_rates_on_selection_and_pair_seeds() -> None:
    from geosane.bench.choices import chosen_learning_rates
    from geosane.bench.results import summary_table
    from geosane.bench.statistics import interval

    mean, std, half = interval([1.0, 2.0, 3.0])  # std 1 (ddof=1); t(0.975, 2) = 4.3027
    assert (mean, std) == (2.0, 1.0) and half == pytest.approx(4.3027 / 3**0.5, rel=1e-4)
    rows = []
    for init, lr, selection, test in [
        ("generated", 0.1, 0.5, 0.90),  # the better test score, the worse selection score: not chosen
        ("generated", 0.2, 0.6, 0.50),
        ("anchor", 0.1, 0.7, 0.40),
        ("anchor", 0.2, 0.1, 0.99),
    ]:
        for seed in (0, 1, 2):
            for epoch in (0, 1):
                score = test + seed / 100 * (init == "anchor")
                rows.append(
                    {"task": "t", "initialization": init, "lr": lr, "seed": seed, "epoch": epoch, "metric": "accuracy",
                     "parameters": 1, "selection_score": selection, "test_score": score}
                )  # fmt: skip
    table = pd.DataFrame(rows)
    table["chosen"] = chosen_learning_rates(table)
    assert set(table[table["chosen"]][["initialization", "lr"]].itertuples(index=False)) == {
        ("generated", 0.2), ("anchor", 0.1),
    }  # fmt: skip
    summary = summary_table(table).set_index("initialization")
    # anchor minus generated per seed: 0.40 + seed/100 - 0.50 -> -0.10, -0.09, -0.08
    assert summary.loc["anchor", "final_diff"] == pytest.approx(-0.09)
    assert summary.loc["anchor", "final_diff_ci"] == pytest.approx(4.3027 * 0.01 / 3**0.5, rel=1e-4)
    assert summary.loc["anchor", "final_std"] == pytest.approx(0.01)
    assert summary.loc["generated", "final_mean"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------- held out


def record(name: str, **tags: str):
    from geosane.collection import ModelRecord

    return ModelRecord(
        id=name, name=name, source="s", source_sha256="", family="resnet", task="classification",
        modality="rgb", bands=None, in_chans=3, num_classes=10, num_params=1, num_tokens=1, token_size=32,
        mode="dense", licence="MIT", tags=tags,
    )  # fmt: skip


def test_a_collection_that_saw_a_tasks_test_images_is_not_held_out(data_root: str) -> None:
    ms = BenchTask(data="eurosat_ms", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01)
    # EuroSAT RGB and multispectral files are the same patches: an RGB zoo that trained on the multispectral test
    # patches' RGB versions saw them
    problems, unknown = held_out_problems([record("rgb", dataset="eurosat_rgb")], ms, data_root)
    assert len(problems) == 1 and "rgb trained on eurosat_rgb" in problems[0] and "eurosat/" in problems[0]
    assert unknown == []
    kept_apart = record("rgb-excluded", dataset="eurosat_rgb", exclude="eurosat_ms", train_limit="2000")
    assert held_out_problems([kept_apart, record("pretrained")], ms, data_root) == ([], ["pretrained"])
    # the same dataset is never held out
    rgb = BenchTask(data="eurosat_rgb", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01)
    assert held_out_problems([kept_apart], rgb, data_root)[0]
    # cloud masks: a model that trained on every sensor saw Landsat 5; one that held Landsat 5 out did not, and
    # a model that held out another sensor saw it
    clouds = BenchTask(
        data="cloudmask?holdout=landsat5", arch="test_resnet", initializations=["scratch"], epochs=1, lr=1
    )
    assert held_out_problems([record("all", dataset="cloudmask")], clouds, data_root)[0]
    assert held_out_problems([record("l5", dataset="cloudmask?holdout=landsat5")], clouds, data_root)[0] == []
    assert held_out_problems([record("s2", dataset="cloudmask?holdout=sentinel2")], clouds, data_root)[0]


def test_the_bench_refuses_to_call_a_seen_task_held_out(workspace: dict[str, str], tmp_path: Path) -> None:
    from geosane.bench import check_held_out, collection_of

    leaky = str(tmp_path / "leaky")
    source = sources.load("timm:test_resnet?num_classes=10&seed=5")
    source.tags = {"dataset": "eurosat_rgb", "arch": "test_resnet"}  # all of the RGB train split
    Collection(leaky).add([source], TokenizerConfig(token_size=32), progress=False)
    task = BenchTask(
        data="eurosat_ms", arch="test_resnet", initializations=["scratch"], epochs=1, lr=0.01, held_out=True
    )
    config = BenchConfig(name="x", autoencoder=workspace["autoencoder"], collection=leaky, tasks=[task])
    with pytest.raises(GeoSANEError, match="eurosat_ms is marked held_out, but 1 collection model"):
        check_held_out(config, collection_of(config))
    config.collection = workspace["collection"]  # the zoo-like collection excluded those patches
    checked = check_held_out(config, collection_of(config))
    assert checked["eurosat_ms"]["checked_models"] == 4


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name",
    [
        "bench-small.yaml",
        "bench-demo.yaml",
        "bench-geosane.yaml",
        "bench-search.yaml",
        "bench-hetero.yaml",
        "bench-budget.yaml",
        "bench-budget-clouds.yaml",
    ],
)
def test_committed_sweeps_validate(name: str, shared: Path) -> None:
    # the paper-scale sweep names datasets that are not on this machine: its names are checked, not its data
    config = BenchConfig.from_yaml(SWEEPS / name, check_data=name != "bench-geosane.yaml")
    per_task = [len(t.initializations) * len(t.lrs) * len(config.seeds_of(t, True)) for t in config.tasks]
    assert len(config.trials()) == sum(per_task)  # the grid on the tuning seeds (every seed, where none are named)
    assert len({t["stem"] for t in config.trials()}) == len(config.trials())  # every trial has its own name


BAD = {
    "unknown key": ("  colour: red\n", "tasks[0].colour: unknown setting"),
    "wrong type": ("  epochs: many\n", "tasks[0].epochs: expected an integer"),
    "unknown dataset": ("  data: eurosat_hd\n", "tasks[0].data: unknown dataset 'eurosat_hd'"),
    "unknown initialization": ("  initializations: [scratch, magic]\n", "tasks[0].initializations: unknown ['magic']"),
    "unknown architecture": ("  arch: resnet9000\n", "tasks[0].arch: unknown timm architecture 'resnet9000'"),
    "no specialist": ("  initializations: [specialist]\n", "no specialist for eurosat_ms"),
    "unknown generation setting": (
        '  initializations: ["generated?colour=red"]\n',  # quoted: in a [...] list, YAML reads ? itself
        "tasks[0].initializations: 'generated.colour=red': 'colour=red' is not KEY=VALUE",
    ),
    "settings on a baseline": ('  initializations: ["anchor?bandwidth=1"]\n', "only generated takes settings"),
    "a refused setting": ('  initializations: ["generated?bandwidth=-1"]\n', "bandwidth must be a number between 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_sweeps_are_rejected_naming_the_key(case: str, tmp_path: Path, data_root: str) -> None:
    line, message = BAD[case]
    task = {"data": "eurosat_ms", "arch": "test_resnet", "initializations": "[scratch]", "epochs": "1", "lr": "0.01"}
    key = line.strip().split(":")[0]
    body = "".join(f"  {k}: {v}\n" for k, v in task.items() if k != key) + line
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nautoencoder: x\ndata_root: {data_root}\ntasks:\n-\n" + body)
    with pytest.raises(GeoSANEError, match=message.replace("[", r"\[").replace("]", r"\]")):
        BenchConfig.from_yaml(path)


def test_a_generated_variant_generates_with_its_own_settings(workspace: dict[str, str], data_root: str) -> None:
    """``generated?KEY=VALUE`` is generation with that setting changed, and nothing else: the same weights as the API
    gives with it, and its notes say which."""
    from geosane.bench import load_task

    spec = TASKS["eurosat_ms"]
    config = config_for(workspace, data_root, [spec])
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config, spec, data, seed=0, lr=spec.lrs[0], collection=workspace["collection"])
    model, notes = build_initial_model("generated?bandwidth=0.3&candidates=3", context)
    assert "bandwidth=0.3, candidates=3" in notes["source"] and notes["source"].endswith("of 3")
    settings = {**context.generation_settings(), "bandwidth": 0.3, "candidates": 3}
    (expected,) = geosane.generate(config.autoencoder, context.prompt_uri(), use_ray=False, **settings)
    assert all(torch.equal(v, expected.state_dict[k]) for k, v in model.state_dict().items())
    default, _ = build_initial_model("generated", context)
    assert any(not torch.equal(v, default.state_dict()[k]) for k, v in model.state_dict().items())
    cloud = BenchTask(
        data="cloudmask", arch="test_resnet", initializations=["generated?search_steps=2"], epochs=1, lr=1
    )
    with pytest.raises(GeoSANEError, match="generated.search_steps=2 searches on a classification loss"):
        BenchConfig(name="x", autoencoder="x", tasks=[cloud], data_root=data_root).validate()


def test_pruning_and_distillation_are_for_classification(tmp_path: Path, data_root: str) -> None:
    task = BenchTask(data="cloudmask", arch="test_resnet", initializations=["pruned"], epochs=1, lr=0.01)
    with pytest.raises(GeoSANEError, match="pruned is for classification, cloudmask is segmentation"):
        BenchConfig(name="x", autoencoder="x", tasks=[task], data_root=data_root).validate()


# ------------------------------------------------------------------------------------------- the sweep


def test_a_two_trial_sweep_writes_its_tables_and_resumes_without_rerunning(
    ray_session, workspace: dict[str, str], data_root: str, tmp_path: Path, bucket: str
) -> None:
    import timm

    # `prompt` with local weights that are not there yet: that trial fails, the scratch trial finishes
    weights = tmp_path / "prompt.safetensors"
    task = BenchTask(
        data="eurosat_ms",
        arch="test_resnet",
        initializations=["scratch", "prompt"],
        epochs=1,
        lr=0.003,
        batch_size=32,
        prompt_weights=str(weights),
    )
    config = config_for(workspace, data_root, [task])
    storage, out = str(tmp_path / "runs"), str(tmp_path / "results")
    first = run_bench(config, storage, progress=False)
    errors = {r.config["trial"]["init"]: r.error for r in first.results[0]}
    assert errors["scratch"] is None and errors["prompt"] is not None
    scratch_rows = next(r for r in first.results[0] if r.config["trial"]["init"] == "scratch").metrics_dataframe
    with pytest.raises(GeoSANEError, match="pass --resume"):
        run_bench(config, storage, progress=False)

    torch.manual_seed(3)
    save_file(timm.create_model("test_resnet", in_chans=13, num_classes=10).state_dict(), str(weights))
    second = run_bench(config, storage, resume=True, progress=False)
    by_init = {r.config["trial"]["init"]: r for r in second.results[0]}
    assert by_init["prompt"].error is None
    # the finished trial was not run again: its reports are the first run's, to the timestamp
    pd.testing.assert_frame_equal(
        by_init["scratch"].metrics_dataframe[["timestamp", "test_score"]].reset_index(drop=True),
        scratch_rows[["timestamp", "test_score"]].reset_index(drop=True),
    )
    info = write_results(second, config, out, "test")
    table = pd.read_parquet(Path(out) / "results.parquet")
    assert sorted(set(table["initialization"])) == ["prompt", "scratch"]
    assert sorted(table["epoch"]) == [0, 0, 1, 1] and table["metric"].eq("accuracy").all()
    assert table["test_score"].between(0, 1).all() and table["parameters"].eq(375_098).all()
    assert "local weights" in table[table["initialization"] == "prompt"]["source"].iloc[0]
    summary = info["summary"].set_index("initialization")
    epoch_1 = table[(table["epoch"] == 1) & (table["initialization"] == "scratch")]["test_score"].iloc[0]
    assert summary.loc["scratch", "final_mean"] == pytest.approx(epoch_1)
    markdown = (Path(out) / "results.md").read_text()
    assert "| scratch | 1 | 375,098 |" in markdown and "| prompt |" in markdown
    assert (Path(out) / "curves-eurosat_ms.png").stat().st_size > 0
    assert list((Path(out) / "tensorboard").rglob("events.out.tfevents.*"))
    assert (Path(out) / "run.json").exists() and (Path(out) / "config.json").exists()
    # results go to object storage as well (written locally, then uploaded)
    import fsspec

    remote = write_results(second, config, f"{bucket}/bench-results", "test")["written"]
    fs = fsspec.filesystem("s3")
    assert fs.exists(remote["results.parquet"]) and fs.glob(f"{bucket}/bench-results/tensorboard/*/*/events.*")


# ------------------------------------------------------------------------------------------- the protocol


def test_a_budget_in_steps_becomes_whole_epochs_of_at_least_that_many_steps() -> None:
    task = BenchTask(data="eurosat_ms", arch="test_resnet", initializations=["scratch"], steps=500, batch_size=32)
    assert task.budgeted(500).epochs == 34  # 15 steps a pass (500 // 32): 34 passes make 510 steps
    assert task.budgeted(32 * 500).epochs == 1
    assert BenchTask(data="x", arch="a", initializations=[], epochs=3).budgeted(10).epochs == 3


def phase_rows(choices: dict[tuple[str, float], float], phase: str = "grid") -> list[dict]:
    """Selection scores at the last epoch per (initialization, learning rate), seeds 0-2."""
    return [
        {"task": "t", "initialization": init, "lr": lr, "seed": seed, "epoch": 1, "phase": phase,
         "selection_score": selection, "test_score": 0.5, "metric": "accuracy", "parameters": 1}
        for (init, lr), selection in choices.items()
        for seed in (0, 1, 2)
    ]  # fmt: skip


def test_a_rate_chosen_at_an_edge_of_the_grid_is_extended_once_past_it() -> None:
    from geosane.bench.choices import chosen_rates, edge_steps

    task = BenchTask(
        data="x", arch="a", label="t", initializations=["low", "mid", "high"], epochs=1, lr=[0.001, 0.01, 0.1]
    )
    config = BenchConfig(name="p", tasks=[task], seeds=[0, 1, 2, 3, 4], tuning_seeds=3)
    grid = phase_rows(
        {("low", 0.001): 0.9, ("low", 0.01): 0.8, ("low", 0.1): 0.1,
         ("mid", 0.001): 0.5, ("mid", 0.01): 0.7, ("mid", 0.1): 0.6,
         ("high", 0.001): 0.2, ("high", 0.01): 0.5, ("high", 0.1): 0.6}
    )  # fmt: skip
    table = pd.DataFrame(grid)
    assert edge_steps(table, config) == {(0, "low"): [pytest.approx(0.0001)], (0, "high"): [pytest.approx(1.0)]}
    extended = pd.DataFrame(grid + phase_rows({("low", 0.0001): 0.95, ("high", 1.0): 0.1}, "edge"))
    assert edge_steps(extended, config) == {}  # once: 0.0001 is an edge again, and is not extended further
    assert chosen_rates(extended, config) == {(0, "low"): 0.0001, (0, "mid"): 0.01, (0, "high"): 0.1}
    rest = pd.DataFrame(grid + phase_rows({("mid", 0.001): 1.0}, "rest"))  # later seeds never choose
    assert chosen_rates(rest, config)[(0, "mid")] == 0.01
    trials = config.trials({(0, "mid"): [0.01]}, "rest")
    assert [(t["init"], t["lr"], t["seed"], t["phase"]) for t in trials] == [
        ("mid", 0.01, 3, "rest"),
        ("mid", 0.01, 4, "rest"),
    ]
    assert {t["seed"] for t in config.trials()} == {0, 1, 2} and len(config.trials()) == 27


def test_a_sweep_runs_the_grid_its_edges_and_the_other_seeds_and_says_so(
    ray_session, workspace: dict[str, str], data_root: str, tmp_path: Path
) -> None:
    """Two seeds, the first tuning a grid of two rates: the chosen rate is at an edge by construction, so it is
    extended once, and the second seed runs at the final choice only; results.md says all of it, with N, probes,
    detectable differences and the count of intervals."""
    task = BenchTask(
        data="eurosat_ms", arch="test_resnet", initializations=["scratch", "anchor"], steps=6, lr=[0.001, 0.003],
        batch_size=32, train_limit=64, test_limit=20, anchors="dataset=eurosat_rgb",
    )  # fmt: skip
    config = config_for(workspace, data_root, [task], tuning_seeds=1)
    config = replace(config, seeds=[0, 1])
    run = run_bench(config, str(tmp_path / "runs"), progress=False)
    assert [len(grid) for grid in run.results] == [4, 2, 2]  # grid 2 rates x 2 inits; one edge each; seed 1 each
    assert run.config.tasks[0].epochs == 3  # 6 steps of 2 a pass
    info = write_results(run, config, str(tmp_path / "out"), "test")
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(table["phase"]) == {"grid", "edge", "rest"}
    rest = table[table["phase"] == "rest"]
    chosen = table[table["chosen"] & (table["phase"] != "rest")].groupby("initialization")["lr"].first()
    assert (rest["seed"] == 1).all() and all(rest.groupby("initialization")["lr"].first() == chosen)
    assert table[table["epoch"] == 0]["linear_probe"].between(0, 1).all()
    assert info["summary"].set_index("initialization").loc["anchor", "chosen_from"] == 2  # best of two anchors
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "extended one step past the grid's edge for anchor" in markdown and "scratch (" in markdown
    assert "the first 1 seeds (the others ran at the chosen rate only)" in markdown
    assert "(from a budget of 6 optimizer steps)" in markdown and "Multiplicity: no paired intervals here" in markdown
    assert "| anchor | 2 | 375,098 |" in markdown and "| linear probe | 10-shot probe |" in markdown


def test_generated_starts_from_the_tasks_prompt_weights(
    workspace: dict[str, str], data_root: str, tmp_path: Path
) -> None:
    """With ``anchors: prompt`` and ``prompt_weights`` (the paper's protocol: a pretrained prompt encoded and sampled
    around), the anchor generation encodes is those weights, not the prompt's random initialization."""
    import timm

    from geosane.bench import load_task

    torch.manual_seed(7)
    pretrained = timm.create_model("test_resnet", in_chans=13, num_classes=10).state_dict()
    path = tmp_path / "prompt.safetensors"
    save_file(pretrained, str(path))
    spec = replace(TASKS["eurosat_ms"], anchors="prompt", prompt_weights=str(path))
    config = config_for(workspace, data_root, [spec])
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config, spec, data, seed=1, lr=spec.lrs[0], collection=workspace["collection"])
    (anchor,) = context.generation_plan().anchors
    assert all(torch.equal(anchor.state_dict[k], v) for k, v in pretrained.items() if k in anchor.state_dict)
    assert sum(k in anchor.state_dict for k in pretrained) >= len(pretrained) - 2  # all but the head at most
