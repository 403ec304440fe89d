"""Selecting and shaping results for the figures: schemes, the reference λ, per-run statistics (pure functions).

Which runs a figure compares comes from the methods' roles carried by the rows (see `style`): the
conventional method (CT), whose sub-networks loaf, and the stimulative one (ST), whose runs have a
sampling space, a λ and a sampling rule.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from loafing.errors import LoafingError
from loafing.figures.style import (ALONE, CONVENTIONAL, STIMULATIVE, Schemes, is_blank, is_blank_cell,
                                   method_styles, schemes_of)
from loafing.method_styles import FOREIGN_METHOD
from loafing.plans import parse_plan
from loafing.schema import RUN_KEY


class NotEnoughData(LoafingError):
    """The data cannot make this figure (make_figures reports it as skipped, not as an error)."""


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise a one-line LoafingError naming the first of `columns` that `df` lacks."""
    for column in columns:
        if column not in df.columns:
            raise LoafingError(f"{source}: missing column '{column}'")


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column of `df`, or empty cells where a table has none (a method column of a run without that method)."""
    return df[name] if name in df.columns else pd.Series("", index=df.index, dtype=object)


def roles(df: pd.DataFrame) -> pd.Series:
    """Each row's method role ('conventional', 'stimulative' or '')."""
    styles = method_styles(df)
    return df["method"].map(lambda m: styles[str(m)].role)


def run_scheme(label: str, trained_plan: object, space_size: object, sampling: object = "",
               variant: object = "") -> str:
    """The training scheme of one run: 'alone', its method's label ('CT', 'ST'), 'LABEL-K' for a restricted space,
    or 'ST (raw)' for a method run with another sampling rule than the ordered one; a run in a variant of its method
    adds it, 'ST++ [subnets=4]'."""
    if not is_blank_cell(trained_plan):
        return ALONE
    if not is_blank_cell(sampling) and sampling != "ordered":
        scheme = f"{label} ({sampling})"
    else:
        scheme = label if is_blank_cell(space_size) else f"{label}-{int(space_size)}"
    return with_variant(scheme, variant)


def with_variant(name: str, variant: object) -> str:
    """A scheme's or label's name with its method variant, if any: 'ST++ [subnets=4]'."""
    return name if is_blank_cell(variant) else f"{name} [{variant}]"


def add_scheme(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` with a `scheme` column (see run_scheme)."""
    styles = method_styles(df)
    out = df.copy()
    out["scheme"] = [run_scheme(styles[str(m)].label, t, s, r, v) for m, t, s, r, v in
                     zip(df["method"], df["trained_plan"], _column(df, "space_size"), _column(df, "sampling"),
                         _column(df, "variant"))]
    return out


def full_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs that trained the whole network (trained_plan empty)."""
    return df[is_blank(df["trained_plan"])]


def sampled_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs whose sub-networks were measured as a sampling space, not only as the inside-vs-alone grid's
    few architectures (`space` "inside"): Table 1's and r3's spread over sub-networks is over a space."""
    if "space" not in df.columns:
        return df
    own = df.loc[df["space"].astype(str) != "inside", "run"].unique()
    return df[df["run"].isin(own)]


def conventionally_trained(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the conventional method's runs and of foreign checkpoints (trained the usual way): the networks whose
    sub-networks Fig. 1 and the inside grid show loafing."""
    return df[roles(df) == CONVENTIONAL]


def ordered_plan_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose plan keeps, per stage, the first blocks of its run's main plan, in order: the sub-network that
    Fig. 1 and the inside grid name by its depths (a run measured in the stochastic or raw space also holds other
    plans of those depths)."""
    if df.empty:
        return df
    key = df[[c for c in (*RUN_KEY, "granularity") if c in df.columns]]
    runs = ["|".join(map(str, values)) for values in key.itertuples(index=False, name=None)]
    is_main = df["is_main"].astype(bool).tolist()
    mains = {run: parse_plan(str(plan)).stages for run, plan, main in zip(runs, df["plan"], is_main) if main}

    def ordered(run: str, plan: str) -> bool:
        main = mains.get(run)
        stages = parse_plan(plan).stages
        return main is None or (len(stages) == len(main) and all(s == m[:len(s)] for s, m in zip(stages, main)))

    return df[[main or ordered(run, str(plan)) for run, plan, main in zip(runs, df["plan"], is_main)]]


def ordered_sampling(df: pd.DataFrame) -> pd.Series:
    """True for rows of runs that are not a stimulative method with another sampling rule than the ordered one."""
    sampling = _column(df, "sampling")
    return (roles(df) != STIMULATIVE) | is_blank(sampling) | (sampling == "ordered")


def conventional_and_stimulative(df: pd.DataFrame, any_sampling: bool = False) -> pd.DataFrame:
    """Rows of the conventional and the stimulative method's own runs (not foreign checkpoints), the stimulative
    ones with ordered sampling unless `any_sampling`: the paper's main figures compare these two."""
    keep = roles(df).isin([CONVENTIONAL, STIMULATIVE]) & (df["method"] != FOREIGN_METHOD)
    return df[keep & (ordered_sampling(df) | any_sampling)]


def stimulative_hosts(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the stimulative runs Fig. 1 sets beside the conventional hosts: the full space (no restricted one),
    any sampling rule, at the reference λ."""
    rows = at_reference_lam(conventional_and_stimulative(df, any_sampling=True))
    return rows[(roles(rows) == STIMULATIVE) & is_blank(_column(rows, "space_size"))]


def of_methods(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Rows of the conventional and stimulative runs and of `methods`' runs (stimulative ones with ordered sampling);
    NotEnoughData unless each of them has rows."""
    main = conventional_and_stimulative(df)
    rows = pd.concat([main, df[df["method"].isin(methods) & ordered_sampling(df)]]).drop_duplicates()
    own = df[df["method"] != FOREIGN_METHOD]
    wanted = []
    for role in (CONVENTIONAL, STIMULATIVE):  # named by the method their rows carry, else by the role
        names = sorted(set(own.loc[roles(own) == role, "method"]))
        wanted.append(names[0] if names else f"the {role} method")
    wanted += [m for m in methods if m not in wanted]
    absent = [m for m in wanted if m not in set(rows["method"])]
    if absent:
        raise NotEnoughData(f"needs runs of {', '.join(wanted[:-1])} and {wanted[-1]} (none of {', '.join(absent)})")
    return rows


def reference_lam(df: pd.DataFrame) -> float | None:
    """The λ shared by the most distinct stimulative runs (ties: the smallest); None without such runs."""
    stimulative = df[roles(df) == STIMULATIVE]
    if stimulative.empty or "lam" not in df.columns:
        return None
    runs_per_lam = stimulative.groupby("lam")["run"].nunique()
    if runs_per_lam.empty:
        return None
    return float(runs_per_lam[runs_per_lam == runs_per_lam.max()].index.min())


def at_reference_lam(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of other methods plus the stimulative rows at the reference λ."""
    lam = reference_lam(df)
    if lam is None:
        return df
    return df[(roles(df) != STIMULATIVE) | (df["lam"] == lam)]


def add_space_size(measure: pd.DataFrame) -> pd.DataFrame:
    """A copy of `measure` with `n_subnetworks` (a stimulative run's sampling-space size: K for ST-K, the plans
    measured for the full space; 0 for other methods) and `label` (the full space named by that size, e.g. 'ST-144',
    so it sits beside ST-6 and ST-48)."""
    out = add_scheme(measure)
    schemes = schemes_of(measure)
    plans_per_run = out.groupby("run")["plan"].nunique()
    samples = [role == STIMULATIVE and scheme != ALONE
               and schemes.split_sampling(schemes.without_variant(scheme)) is None
               for role, scheme in zip(roles(out), out["scheme"])]
    sizes = []
    for run, space_size, sampled in zip(out["run"], _column(out, "space_size"), samples):
        if not sampled:
            sizes.append(0)
        elif is_blank_cell(space_size):
            sizes.append(int(plans_per_run[run]))
        else:
            sizes.append(int(space_size))
    out["n_subnetworks"] = sizes
    styles = method_styles(measure)
    out["label"] = [with_variant(f"{styles[str(m)].label}-{n}", v) if sampled else scheme
                    for m, scheme, sampled, n, v in zip(out["method"], out["scheme"], samples, out["n_subnetworks"],
                                                        _column(out, "variant"))]
    return out


def label_palette(df: pd.DataFrame, schemes: Schemes) -> dict[str, str]:
    """Colour of each `label` in `df`, taken from its scheme (a full space wins when a label is shared)."""
    palette: dict[str, str] = {}
    for label, scheme in zip(df["label"], df["scheme"]):
        if label not in palette or schemes.split_restricted(scheme) is None:
            palette[label] = schemes.colour(scheme)
    return palette


def network_names(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(model, depths) -> the architecture's name in the figures: what the model's spec called it when the rows were
    written (the `architecture` column, 'ResNet20'), else its depths."""
    architecture = _column(df, "architecture")
    names = {}
    for model, depths, name in zip(df["model"], df["depths"], architecture):
        if (model, depths) not in names or not is_blank_cell(name):
            names[(model, depths)] = depths if is_blank_cell(name) else str(name)
    return names


def per_run_subnetwork_stats(measure: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its seed, scheme, label, n_subnetworks, λ, main top-1 and sub-network top-1 max/mean/std."""
    rows = []
    lam = _column(measure, "lam")
    for run, rows_of_run in measure.groupby("run", sort=True):
        sub = rows_of_run.loc[~rows_of_run["is_main"], "top1"]
        main = rows_of_run.loc[rows_of_run["is_main"], "top1"]
        first = rows_of_run.iloc[0]
        rows.append({"run": run, "seed": first["seed"], "lam": lam[rows_of_run.index[0]], "method": first["method"],
                     "scheme": first["scheme"], "label": first["label"], "n_subnetworks": first["n_subnetworks"],
                     "main_top1": main.mean() if len(main) else np.nan,
                     # The whole space is measured, so its spread is a population std (ddof=0).
                     "sub_max": sub.max() if len(sub) else np.nan, "sub_mean": sub.mean() if len(sub) else np.nan,
                     "sub_std": sub.std(ddof=0) if len(sub) else np.nan})
    return pd.DataFrame(rows, columns=["run", "seed", "lam", "method", "scheme", "label", "n_subnetworks",
                                       "main_top1", "sub_max", "sub_mean", "sub_std"])


def per_plan_means(measure: pd.DataFrame) -> pd.DataFrame:
    """Sub-network top-1 per label (rows) and plan (columns), averaged over seeds: the pairs of a paired test."""
    subs = measure[~measure["is_main"]]
    return subs.groupby(["label", "plan"])["top1"].mean().unstack("plan")
