"""Initializations: every registered one is tried, builds a model that runs on its task, and picks what it
starts from on the selection split or the recorded metric, never a count; generated variants and prompt weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import geosane
from geosane.bench import (
    INITIALIZATIONS,
    BenchConfig,
    BenchTask,
    TrialContext,
    build_initial_model,
    score,
)
from geosane.errors import GeoSANEError

from .conftest import PAIRS, TASKS, config_for


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
    where = {"collection": context.collection, "data_root": config.data_root}
    (expected,) = geosane.generate(config.autoencoder, context.prompt_uri(), use_ray=False, **where, **settings)
    assert all(torch.equal(v, expected.state_dict[k]) for k, v in model.state_dict().items())
    default, _ = build_initial_model("generated", context)
    assert any(not torch.equal(v, default.state_dict()[k]) for k, v in model.state_dict().items())
    cloud = BenchTask(
        data="cloudmask", arch="test_resnet", initializations=["generated?search_steps=2"], epochs=1, lr=1
    )
    with pytest.raises(GeoSANEError, match="generated.search_steps=2 searches on a classification loss"):
        BenchConfig(name="x", autoencoder="x", tasks=[cloud], data_root=data_root).validate()


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
    (anchor,) = context.generator().anchors
    assert all(torch.equal(anchor.state_dict[k], v) for k, v in pretrained.items() if k in anchor.state_dict)
    assert sum(k in anchor.state_dict for k in pretrained) >= len(pretrained) - 2  # all but the head at most


def test_a_held_out_task_prunes_and_distils_from_its_domains_other_classes(
    workspace: dict[str, str], data_root: str
) -> None:
    """For EuroSAT classes 5-9 no collection model learned the task's classes: ``pruned`` and ``distilled`` take the
    domain's models of the other classes (chosen by a linear probe on the selection split), pruned with a new head
    of the task's five classes, or teaching through a linear head fitted on the train split's features."""
    from geosane.bench import load_task

    spec = replace(TASKS["eurosat_rgb-light"], data="eurosat_rgb?classes=5-9")
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config_for(workspace, data_root, [spec]), spec, data, seed=2, lr=spec.lrs[0])
    context.collection = workspace["collection"]
    model, notes = build_initial_model("pruned", context)
    assert "a new head for the task's classes" in notes["source"] and notes["chosen_from"] == 2  # the two ResNets
    target = context.target_model()
    assert abs(notes["parameters"] - sum(p.numel() for p in target.parameters())) < 0.05 * notes["parameters"]
    with torch.no_grad():
        assert model(data.train[0][:4]).shape == (4, 5)
    student, notes = build_initial_model("distilled", context)
    teacher = student.teacher
    assert "linear head fitted on its features of the train split" in notes["source"]
    with torch.no_grad():
        predicted = teacher(data.train[0]).argmax(1)
    assert float((predicted == data.train[1]).float().mean()) > 0.5  # the fitted head answers in the task's classes
