"""Sweep settings: the committed sweeps validate, bad ones are refused naming the key, budgets in steps become
whole epochs, and pruning and distillation are for classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.bench import (
    BenchConfig,
    BenchTask,
)
from geosane.errors import GeoSANEError

from .conftest import SWEEPS


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
        "bench-imagenet.yaml",
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
        "tasks[0].initializations: 'generated.colour=red': unknown option",
    ),
    "settings on a baseline": ('  initializations: ["anchor?bandwidth=1"]\n', "only generated takes settings"),
    "a refused setting": (
        '  initializations: ["generated?bandwidth=-1"]\n',
        "bandwidth: Input should be greater than or equal to 0",
    ),
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


def test_pruning_and_distillation_are_for_classification(tmp_path: Path, data_root: str) -> None:
    task = BenchTask(data="cloudmask", arch="test_resnet", initializations=["pruned"], epochs=1, lr=0.01)
    with pytest.raises(GeoSANEError, match="pruned is for classification, cloudmask is segmentation"):
        BenchConfig(name="x", autoencoder="x", tasks=[task], data_root=data_root).validate()


def test_a_budget_in_steps_becomes_whole_epochs_of_at_least_that_many_steps() -> None:
    task = BenchTask(data="eurosat_ms", arch="test_resnet", initializations=["scratch"], steps=500, batch_size=32)
    assert task.budgeted(500).epochs == 34  # 15 steps a pass (500 // 32): 34 passes make 510 steps
    assert task.budgeted(32 * 500).epochs == 1
    assert BenchTask(data="x", arch="a", initializations=[], epochs=3).budgeted(10).epochs == 3
