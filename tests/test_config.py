"""One loader for every YAML config: safe, typed, and errors that name the file, the line, the key and the type."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from geosane.bench import BenchConfig
from geosane.config import load_config, settings
from geosane.errors import GeoSANEError
from geosane.train import TrainConfig
from geosane.zoo import ZooConfig

SWEEPS = Path(__file__).parents[1] / "sweeps"
KINDS = {"train": TrainConfig, "zoo": ZooConfig, "bench": BenchConfig}  # sweeps/<stage>-<name>.yaml


@settings
class Group:
    dataset: str
    trials: int = 1


@settings
class Example:
    name: str
    groups: list[Group] = field(default_factory=list)
    lr: float = 1e-3
    flag: bool = False
    search: dict[str, Any] = field(default_factory=dict)


def load(tmp_path: Path, text: str) -> Example:
    path = tmp_path / "example.yaml"
    path.write_text(text)
    return load_config(path, Example)


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_loads_through_its_settings_class(path: Path) -> None:
    kind = KINDS[path.name.split("-")[0]]
    assert isinstance(load_config(path, kind), kind)


def test_values_are_typed(tmp_path: Path) -> None:
    loaded = load(tmp_path, "name: x\ngroups: [{dataset: eurosat_rgb, trials: 2}]\nlr: 1e-3\nflag: true\n")
    assert loaded == Example(name="x", groups=[Group("eurosat_rgb", 2)], lr=0.001, flag=True)
    assert isinstance(loaded.groups[0], Group) and isinstance(loaded.lr, float)  # YAML reads 1e-3 as a string


def test_unknown_keys_and_wrong_types_are_named_with_their_line(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError) as error:
        load(tmp_path, "name: x\ngroups:\n  - dataset: e\n    trials: two\n    colour: red\nlr: [1]\nflag: maybe\n")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'example.yaml'}: 4 problem(s) in Example settings")
    for line in (
        "line 4: groups[0].trials: expected an integer, got 'two'",
        "line 5: groups[0].colour: unknown setting",
        "line 6: lr: expected a number, got [1]",
        "line 7: flag: expected a boolean, got 'maybe'",
    ):
        assert line in message
    with pytest.raises(GeoSANEError) as error:
        load(tmp_path, "groups:\n  - trials: 1\n")
    assert "line 1: name: missing (required)" in str(error.value)
    assert "line 2: groups[0].dataset: missing (required)" in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: !!python/object/apply:os.system [touch pwned]\n", r"example.yaml:1: YAML tag not allowed"),
        ("name: !!python/name:os.system\n", "YAML tag not allowed"),
        ("", "is empty; expected the settings of Example"),
        ("- a\n- b\n", "example.yaml:1: expected a mapping of settings, got a list"),
        ("name: [unclosed\n", r"example.yaml:2: not valid YAML"),
    ],
)
def test_unsafe_or_malformed_yaml_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GeoSANEError, match=message):
        load(tmp_path, text)
    assert not Path("pwned").exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match=f"config {tmp_path / 'nope.yaml'} not found"):
        load_config(tmp_path / "nope.yaml", Example)


def test_train_settings_from_yaml_take_overrides(tmp_path: Path) -> None:
    config = TrainConfig.from_yaml(SWEEPS / "train-tiny.yaml", collection="c", steps=None, workers=1)
    assert (config.collection, config.steps, config.workers, config.model) == ("c", 60, 1, "tiny")
    (tmp_path / "bad.yaml").write_text("model: tiny\nzero_stage: three\n")
    with pytest.raises(GeoSANEError, match="line 2: zero_stage: expected an integer, got 'three'"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
