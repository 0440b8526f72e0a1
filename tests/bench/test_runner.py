"""The runner: a real two-trial Tune sweep writes its tables and resumes without rerunning, and a sweep runs its
grid, the grid's edges and the other seeds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from geosane.bench import (
    BenchTask,
    run_bench,
    write_results,
)
from geosane.errors import GeoSANEError

from .conftest import config_for


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
