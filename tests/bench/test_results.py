"""The one line a sweep ends with: what the paired differences against ``generated`` show, and nothing more."""

from __future__ import annotations

import math

import pandas as pd

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
