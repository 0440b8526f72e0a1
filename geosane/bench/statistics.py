"""The statistics every benchmark result carries: the mean with its ``ddof=1`` spread and 95% t-interval over seeds,
and the smallest paired difference a run could have detected."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["detectable", "interval"]


def interval(values: Any) -> tuple[float, float, float]:
    """Mean, std (``ddof=1``) and the half-width of the 95% t-interval of the mean of ``values`` (NaN where fewer
    than two).

    Args:
        values: numbers (one per seed).

    Returns:
        Mean, std and half-width.
    """
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), math.nan, math.nan
    std = float(values.std(ddof=1))
    return float(values.mean()), std, float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)))


def detectable(spread: float, n: int, power: float = 0.8) -> float:
    """The smallest paired difference a two-sided 5% t-test on ``n`` pairs would detect with ``power``, given the
    observed standard deviation of the pairs' differences (``(t_0.975 + t_power) * spread / sqrt(n)``).

    Args:
        spread: the paired differences' standard deviation (``ddof=1``).
        n: pairs.
        power: the detection probability.

    Returns:
        The difference (NaN for fewer than two pairs).
    """
    from scipy import stats

    if n < 2 or math.isnan(spread):
        return math.nan
    return float((stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * spread / math.sqrt(n))
