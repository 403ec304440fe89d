"""Selecting and shaping results for the figures: schemes, the reference λ, per-run statistics (pure functions)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from loafing.errors import LoafingError
from loafing.methods import METHODS
from loafing.models import MODELS
from loafing.schema import FOREIGN_METHOD

ALONE = "alone"
ALONE_LABEL = "trained alone"
ALONE_COLOUR = "#55a868"
FOREIGN_LABEL = "foreign checkpoint"
FOREIGN_COLOUR = "#8c8c8c"
# Restricted spaces (e.g. ST-K) get a colour from K itself, so ST-48 looks the same in every figure.
RESTRICTED_COLOURS = ("#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
# ST with another sampling rule than the paper's ordered one: 'ST (raw)', 'ST (stochastic)'.
SAMPLING_COLOURS = {"stochastic": "#e17c05", "raw": "#7f3c8d"}


class NotEnoughData(LoafingError):
    """The data cannot make this figure (make_figures reports it as skipped, not as an error)."""


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise a one-line LoafingError naming the first of `columns` that `df` lacks."""
    for column in columns:
        if column not in df.columns:
            raise LoafingError(f"{source}: missing column '{column}'")


def is_blank(values: pd.Series) -> pd.Series:
    """True where a CSV cell was empty (NaN after reading, or an empty string)."""
    return values.isna() | (values.astype("string").str.strip() == "")


def is_blank_cell(value: object) -> bool:
    """True for one empty CSV cell (NaN after reading, or an empty string)."""
    return bool(pd.isna(value)) or str(value).strip() == ""


def _labels() -> dict[str, int]:
    """Each registered method's label and its position in the registry."""
    return {m.label: i for i, m in enumerate(METHODS.values())}


def run_scheme(method: str, trained_plan: object, space_size: object, sampling: object = "") -> str:
    """The training scheme of one run: 'alone', the method's label ('CT', 'ST'), 'LABEL-K' for a restricted space,
    or 'ST (raw)' for ST with another sampling rule than the ordered one."""
    if not is_blank_cell(trained_plan):
        return ALONE
    if method == FOREIGN_METHOD:
        return FOREIGN_LABEL
    if method not in METHODS:
        raise LoafingError(f"unknown method '{method}'; valid choices: {', '.join(METHODS)}")
    label = METHODS[method].label
    if not is_blank_cell(sampling) and sampling != "ordered":
        return f"{label} ({sampling})"
    return label if is_blank_cell(space_size) else f"{label}-{int(space_size)}"


def _sampling(df: pd.DataFrame) -> pd.Series:
    return df["sampling"] if "sampling" in df.columns else pd.Series("", index=df.index)


def add_scheme(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` with a `scheme` column (see run_scheme)."""
    out = df.copy()
    out["scheme"] = [run_scheme(m, t, s, r) for m, t, s, r in zip(df["method"], df["trained_plan"], df["space_size"],
                                                                  _sampling(df))]
    return out


def _split_sampling(scheme: str) -> tuple[str, str] | None:
    """('ST', 'raw') for 'ST (raw)'; None if `scheme` is not a method's label with a sampling rule."""
    base, _, rule = scheme.partition(" (")
    return (base, rule[:-1]) if base in _labels() and rule[:-1] in SAMPLING_COLOURS else None


def _split_restricted(scheme: str) -> tuple[str, int] | None:
    """('ST', 48) for 'ST-48'; None if `scheme` is not a method's label with a space size."""
    base, _, size = scheme.rpartition("-")
    return (base, int(size)) if base in _labels() and size.isdigit() and int(size) > 0 else None


def scheme_colour(scheme: str) -> str:
    """The fixed colour of a scheme: its method's, one per space size for 'LABEL-K', green for 'alone'."""
    if scheme == ALONE:
        return ALONE_COLOUR
    if scheme == FOREIGN_LABEL:
        return FOREIGN_COLOUR
    colours = {m.label: m.colour for m in METHODS.values()}
    if scheme in colours:
        return colours[scheme]
    restricted = _split_restricted(scheme)
    if restricted is not None:
        return RESTRICTED_COLOURS[int(math.log2(restricted[1])) % len(RESTRICTED_COLOURS)]
    sampled = _split_sampling(scheme)
    if sampled is not None:
        return SAMPLING_COLOURS[sampled[1]]
    raise LoafingError(f"unknown scheme '{scheme}' (expected {', '.join(colours)}, LABEL-K, LABEL (rule) or alone)")


def scheme_order(labels: Sequence[str]) -> list[str]:
    """Labels in registry order of their methods (CT first), restricted spaces by growing size before the full one,
    other sampling rules after it."""
    position = _labels()

    def key(label: str) -> tuple[int, int, float, str]:
        if label in position:
            return (0, position[label], math.inf, label)
        restricted = _split_restricted(label)
        if restricted is not None:
            return (0, position[restricted[0]], float(restricted[1]), label)
        sampled = _split_sampling(label)
        if sampled is not None:
            return (0, position[sampled[0]], math.inf, label)  # after the plain label: a prefix sorts first
        return (1, 0, 0.0, label)
    return sorted(set(labels), key=key)


def architecture_name(model: str, depths: str) -> str | None:
    """What the model's spec calls the plan with these per-stage depths ('ResNet20'), if anything."""
    spec = MODELS.get(model)
    return spec.architecture_name(tuple(int(d) for d in depths.split("-"))) if spec else None


def full_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs that trained the whole network (trained_plan empty)."""
    return df[is_blank(df["trained_plan"])]


def conventionally_trained(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of CT runs and of foreign checkpoints (method 'external', trained the usual way): the networks whose
    sub-networks Fig. 1 and the inside grid show loafing."""
    return df[df["method"].isin(["ct", FOREIGN_METHOD])]


def network_name(model: str, depths: str) -> str:
    """An architecture's name in the figures: what the model's spec calls it ('ResNet20'), else its depths."""
    return architecture_name(model, depths) or depths


def ordered_sampling(df: pd.DataFrame) -> pd.Series:
    """True for rows of runs that are not ST with another sampling rule than the paper's ordered one."""
    sampling = _sampling(df)
    return (df["method"] != "st") | is_blank(sampling) | (sampling == "ordered")


def ct_and_st(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of CT and ST (ordered sampling) runs: the paper's main figures compare these two."""
    return df[df["method"].isin(["ct", "st"]) & ordered_sampling(df)]


def of_methods(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Rows of runs of `methods`, ST only with ordered sampling; NotEnoughData unless each method has rows."""
    rows = df[df["method"].isin(methods) & ordered_sampling(df)]
    absent = [m for m in methods if m not in set(rows["method"])]
    if absent:
        raise NotEnoughData(f"needs runs of {', '.join(methods)}; none of {', '.join(absent)}")
    return rows


def reference_lam(df: pd.DataFrame) -> float | None:
    """The λ shared by the most distinct ST runs (ties: the smallest); None without ST runs."""
    st = df[df["method"] == "st"]
    if st.empty:
        return None
    runs_per_lam = st.groupby("lam")["run"].nunique()
    return float(runs_per_lam[runs_per_lam == runs_per_lam.max()].index.min())


def at_reference_lam(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of other methods (any λ) plus the ST rows at the reference λ."""
    lam = reference_lam(df)
    if lam is None:
        return df
    return df[(df["method"] != "st") | (df["lam"] == lam)]


def add_space_size(measure: pd.DataFrame) -> pd.DataFrame:
    """A copy of `measure` with `n_subnetworks` (ST's sampling-space size: K for ST-K, the plans measured for full ST;
    0 for other methods) and `label` (full ST named by that size, e.g. 'ST-144', so it sits beside ST-6 and ST-48)."""
    out = add_scheme(measure)
    plans_per_run = out.groupby("run")["plan"].nunique()
    samples = [method == "st" and scheme != ALONE and _split_sampling(scheme) is None
               for method, scheme in zip(out["method"], out["scheme"])]
    sizes = []
    for run, space_size, st in zip(out["run"], out["space_size"], samples):
        if not st:
            sizes.append(0)
        elif is_blank_cell(space_size):
            sizes.append(int(plans_per_run[run]))
        else:
            sizes.append(int(space_size))
    out["n_subnetworks"] = sizes
    out["label"] = [f"{METHODS['st'].label}-{n}" if st else scheme
                    for scheme, st, n in zip(out["scheme"], samples, out["n_subnetworks"])]
    return out


def label_palette(df: pd.DataFrame) -> dict[str, str]:
    """Colour of each `label` in `df`, taken from its scheme (a full space wins when a label is shared)."""
    palette: dict[str, str] = {}
    for label, scheme in zip(df["label"], df["scheme"]):
        if label not in palette or _split_restricted(scheme) is None:
            palette[label] = scheme_colour(scheme)
    return palette


def per_run_subnetwork_stats(measure: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its seed, scheme, label, n_subnetworks, λ, main top-1 and sub-network top-1 max/mean/std."""
    rows = []
    for run, rows_of_run in measure.groupby("run", sort=True):
        sub = rows_of_run.loc[~rows_of_run["is_main"], "top1"]
        main = rows_of_run.loc[rows_of_run["is_main"], "top1"]
        first = rows_of_run.iloc[0]
        rows.append({"run": run, "seed": first["seed"], "lam": first["lam"], "scheme": first["scheme"],
                     "label": first["label"], "n_subnetworks": first["n_subnetworks"],
                     "main_top1": main.mean() if len(main) else np.nan,
                     # The whole space is measured, so its spread is a population std (ddof=0).
                     "sub_max": sub.max() if len(sub) else np.nan, "sub_mean": sub.mean() if len(sub) else np.nan,
                     "sub_std": sub.std(ddof=0) if len(sub) else np.nan})
    return pd.DataFrame(rows, columns=["run", "seed", "lam", "scheme", "label", "n_subnetworks", "main_top1",
                                       "sub_max", "sub_mean", "sub_std"])


def per_plan_means(measure: pd.DataFrame) -> pd.DataFrame:
    """Sub-network top-1 per label (rows) and plan (columns), averaged over seeds: the pairs of a paired test."""
    subs = measure[~measure["is_main"]]
    return subs.groupby(["label", "plan"])["top1"].mean().unstack("plan")
