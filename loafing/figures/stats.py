"""Statistics for the tables, with the training run (its seed) as the unit of replication.

The sub-networks of one network share its weights and its one training run, so they are not independent samples:
a difference between two schemes over plans is described (mean and range over plans), never tested. Intervals come
only from independent training runs, from `MIN_SEEDS` up, and an interval of a bounded metric stays within its
bounds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # a t-interval from two runs has one degree of freedom: ±12.7 standard errors, which says nothing
PERCENT = (0.0, 100.0)
PERCENT_DIFFERENCE = (-100.0, 100.0)
# What a table's note says of its statistics (one wording for every table).
PLANS_DESCRIBED = ("described by its mean and range over plans: the plans of one network share its weights and its "
                   "training run, so they are not independent samples and no test is made over them")
SEED_INTERVALS = f"95% t-intervals over training runs, given from {MIN_SEEDS} seeds up, clipped to the metric's range"


def seed_interval(values: pd.Series, bounds: tuple[float, float] = PERCENT) -> tuple[float, float]:
    """The 95% t-interval of the mean of one value per training run, clipped to `bounds`; NaNs below MIN_SEEDS."""
    values = values.dropna().astype(float)
    if len(values) < MIN_SEEDS:
        return np.nan, np.nan
    spread = stats.sem(values)
    if spread == 0:  # identical runs: the interval is the value itself (scipy would warn and return NaN)
        return float(values.iloc[0]), float(values.iloc[0])
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=values.mean(), scale=spread)
    return float(max(low, bounds[0])), float(min(high, bounds[1]))


def seed_paired_difference(treated: pd.Series, baseline: pd.Series) -> dict[str, float]:
    """Treated minus baseline over the seeds both have (each indexed by seed): the number of seeds, the mean
    difference and its 95% t-interval over seeds (clipped to ±100 points; NaNs below MIN_SEEDS)."""
    pairs = pd.concat([treated, baseline], axis=1, join="inner").dropna()
    differences = pairs.iloc[:, 0] - pairs.iloc[:, 1]
    low, high = seed_interval(differences, PERCENT_DIFFERENCE)
    return {"n": len(pairs), "mean": float(differences.mean()) if len(pairs) else np.nan, "low": low, "high": high}


def plan_differences(treated: pd.Series, baseline: pd.Series) -> dict[str, float]:
    """Treated minus baseline plan by plan (each indexed by plan), described: the number of plans, the mean, the
    smallest and the largest difference. Descriptive statistics of the networks measured, not a test."""
    pairs = pd.concat([treated, baseline], axis=1, join="inner").dropna()
    differences = pairs.iloc[:, 0] - pairs.iloc[:, 1]
    if differences.empty:
        return {"n": 0, "mean": np.nan, "min": np.nan, "max": np.nan}
    return {"n": len(differences), "mean": float(differences.mean()), "min": float(differences.min()),
            "max": float(differences.max())}


def interval_text(low: float, high: float) -> str:
    """'[a, b]' with two decimals, or a dash when the interval is undefined."""
    return "–" if np.isnan(low) or np.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def range_text(differences: dict[str, float]) -> str:
    """'a to b' for the smallest and largest of `plan_differences`, or a dash."""
    low, high = differences["min"], differences["max"]
    return "–" if np.isnan(low) or np.isnan(high) else f"{low:+.2f} to {high:+.2f}"
