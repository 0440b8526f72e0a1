"""The statistics of every result: the mean, its ``ddof=1`` spread and 95% t-interval over seeds, and the smallest
paired difference a run could have detected."""

from __future__ import annotations

import math

import pytest

from geosane.bench.statistics import detectable, interval


def test_an_interval_is_the_t_interval_of_the_mean() -> None:
    mean, std, half = interval([1.0, 2.0, 3.0, math.nan])  # NaN (a missing seed) is left out
    assert (mean, std) == (2.0, 1.0) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert interval([5.0])[0] == 5.0 and math.isnan(interval([5.0])[2]) and math.isnan(interval([])[0])


def test_the_detectable_difference_shrinks_with_pairs_and_grows_with_spread() -> None:
    # (t_0.975,9 + t_0.8,9) * 0.02 / sqrt(10) = (2.262157 + 0.883404) * 0.02 / 3.162278
    assert detectable(0.02, 10) == pytest.approx(0.0198945, rel=1e-4)
    assert detectable(0.02, 20) < detectable(0.02, 10) < detectable(0.04, 10)
    assert detectable(0.02, 10, power=0.9) > detectable(0.02, 10)
    assert math.isnan(detectable(0.02, 1)) and math.isnan(detectable(math.nan, 5))
