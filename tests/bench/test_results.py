"""The one line a sweep ends with: what the paired differences against ``generated`` show, and nothing more."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from geosane.bench import verdict


def rows(diffs: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """A summary with one task: ``generated`` and each baseline's final paired difference (init minus generated)."""
    table = [{"initialization": "generated", "final_diff": math.nan, "final_diff_ci": math.nan}]
    table += [{"initialization": k, "final_diff": d, "final_diff_ci": ci} for k, (d, ci) in diffs.items()]
    return pd.DataFrame(table)


def test_verdict_claims_only_what_the_interval_excludes() -> None:
    line = verdict(rows({"scratch": (-0.05, 0.02), "anchor": (0.03, 0.01), "noised": (0.01, 0.05)}))
    assert "vs scratch: better on 1, worse on 0, level on 0 of 1" in line
    assert "vs anchor: better on 0, worse on 1, level on 0 of 1" in line
    assert "vs noised: better on 0, worse on 0, level on 1 of 1" in line
    assert "95% paired intervals" in line


def test_verdict_with_one_seed_counts_signs_and_says_so() -> None:
    line = verdict(rows({"scratch": (-0.05, math.nan)}))
    assert "vs scratch: better on 1" in line and "one seed" in line
    assert verdict(rows({}).iloc[:0]) == "no generated models in this sweep"


def test_the_detectable_difference_follows_the_t_test_it_stands_for() -> None:
    """At the detectable difference, a t-test on that many pairs with that spread has 80% power: checked by
    simulation (4,000 draws), and it shrinks with the square root of the pairs."""
    import numpy as np
    from scipy import stats

    from geosane.bench.statistics import detectable

    spread, n = 0.03, 10
    delta = detectable(spread, n)
    rng = np.random.default_rng(0)
    draws = rng.normal(delta, spread, size=(4000, n))
    power = float((stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean())
    assert 0.75 < power < 0.85, power  # the normal-approximation form would land far from 0.8 at n=10
    assert detectable(spread, 40) < delta / 1.9 and math.isnan(detectable(spread, 1))


def frame(scores: dict[str, list[float]], probes: dict[str, list[float]]) -> pd.DataFrame:
    """Trial rows of one task at one learning rate: epoch 0 and 1 per seed, with probes at epoch 0."""
    table = []
    for init, values in scores.items():
        for seed, value in enumerate(values):
            for epoch in (0, 1):
                table.append(
                    {
                        "task": "t", "initialization": init, "lr": 0.01, "seed": seed, "epoch": epoch,
                        "metric": "accuracy", "test_score": value + 0.1 * epoch, "selection_score": value,
                        "parameters": 10, "chosen_from": 4 if init == "generated" else 1, "distance": math.nan,
                        "linear_probe": probes[init][seed] if epoch == 0 else math.nan,
                        "few_shot_probe": probes[init][seed] - 0.2 if epoch == 0 else math.nan,
                    }
                )  # fmt: skip
    return pd.DataFrame(table)


def test_the_summary_pairs_probes_and_says_what_each_comparison_could_detect() -> None:
    from geosane.bench.results import summary_table

    table = frame(
        {"generated": [0.70, 0.72, 0.71, 0.69], "anchor": [0.75, 0.78, 0.74, 0.76]},
        {"generated": [0.80, 0.81, 0.79, 0.80], "anchor": [0.80, 0.82, 0.80, 0.79]},
    )
    table["chosen"] = True
    summary = summary_table(table).set_index("initialization")
    anchor = summary.loc["anchor"]
    assert anchor["final_diff"] == pytest.approx(0.0525) and anchor["final_detectable"] > 0
    assert anchor["linear_probe_diff"] == pytest.approx(0.0025) and anchor["linear_probe_mean"] == pytest.approx(0.8025)
    assert anchor["few_shot_probe_mean"] == pytest.approx(0.6025)
    assert summary.loc["generated", "chosen_from"] == 4 and anchor["chosen_from"] == 1
    assert math.isnan(summary.loc["generated", "final_detectable"])  # no pairs with itself


def test_results_md_gives_each_paired_comparison_its_detectable_difference_and_counts_the_intervals() -> None:
    from geosane.bench import BenchConfig, BenchTask
    from geosane.bench.results import markdown, summary_table

    table = frame(
        {"generated": [0.70, 0.72, 0.71, 0.69], "anchor": [0.75, 0.78, 0.74, 0.76]},
        {"generated": [0.80, 0.81, 0.79, 0.80], "anchor": [0.80, 0.82, 0.80, 0.79]},
    )
    table["chosen"] = True
    task = BenchTask(data="d", arch="a", label="t", initializations=["generated", "anchor"], epochs=1, lr=0.01)
    config = BenchConfig(name="n", tasks=[task], seeds=[0, 1, 2, 3])
    info = {"name": "n", "collection": {"collection": "c", "version": 1}, "software": {}, "held_out": {}, "sources": {}}
    text = markdown(summary_table(table), config, info)
    anchor = next(line for line in text.splitlines() if line.startswith("| anchor | +"))
    assert anchor.count("detects") == 5  # epochs 0, 1, final (here epoch 1) and two probes; epoch 5 was not run
    assert "Multiplicity: this file holds 5 paired 95% intervals" in text  # epoch 0, epoch 1, final, two probes
