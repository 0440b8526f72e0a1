"""Choices on the selection split: learning rates per initialization with seeds paired, and a rate chosen at an
edge of the grid extended once past it."""

from __future__ import annotations

import pandas as pd
import pytest

from geosane.bench import (
    BenchConfig,
    BenchTask,
)

from .conftest import phase_rows


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
