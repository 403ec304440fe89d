"""Confidence intervals and paired tests for the tables, from scipy.stats."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def mean_interval(values: pd.Series) -> tuple[float, float]:
    """The 95% t-interval of the mean of `values` (e.g. one value per seed); NaNs with fewer than two values."""
    values = values.dropna()
    if len(values) < 2:
        return np.nan, np.nan
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def paired_difference(treated: pd.Series, baseline: pd.Series) -> dict[str, float]:
    """Paired comparison over matched items (sub-networks): mean difference, its 95% CI, paired-t and Wilcoxon p."""
    pairs = pd.concat([treated, baseline], axis=1, join="inner").dropna()
    if len(pairs) < 2:
        return {"n": len(pairs), "mean": np.nan, "low": np.nan, "high": np.nan, "p_t": np.nan, "p_wilcoxon": np.nan}
    a, b = pairs.iloc[:, 0].to_numpy(), pairs.iloc[:, 1].to_numpy()
    t_test = stats.ttest_rel(a, b)
    interval = t_test.confidence_interval(CONFIDENCE)
    differences = a - b
    p_wilcoxon = stats.wilcoxon(differences).pvalue if np.any(differences != 0) else 1.0
    return {"n": len(pairs), "mean": float(differences.mean()), "low": float(interval.low),
            "high": float(interval.high), "p_t": float(t_test.pvalue), "p_wilcoxon": float(p_wilcoxon)}


def interval_text(low: float, high: float) -> str:
    """'[a, b]' with two decimals, or a dash when the interval is undefined."""
    return "–" if np.isnan(low) or np.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def p_text(p: float) -> str:
    """A p-value with two significant digits, or a dash."""
    return "–" if np.isnan(p) else f"{p:.2g}"
