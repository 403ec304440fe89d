"""An ablation table: one row per arm of a study (its runs over seeds), against the stimulative reference (ST).

An arm is a run's name without its `-seed<N>` suffix, so the study's names say which runs are one setting repeated;
the reference arm is the one of the stimulative method registered first (ST), so other stimulative methods' arms
(ST++'s ingredients) are compared with it.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from loafing.figures.select import NotEnoughData, full_runs, roles
from loafing.figures.stats import (PERCENT_DIFFERENCE, PLANS_DESCRIBED, SEED_INTERVALS, interval_text,
                                   plan_differences, range_text, seed_interval, seed_paired_difference)
from loafing.figures.style import STIMULATIVE

SEED_SUFFIX = re.compile(r"-seed\d+$")


def arm_names(runs: pd.Series) -> pd.Series:
    """Each run's arm: its name without a trailing `-seed<N>`."""
    return runs.astype(str).str.replace(SEED_SUFFIX, "", regex=True)


def reference_arm(measure: pd.DataFrame) -> str:
    """The arm of the first-registered stimulative method (lowest method_order), its first arm in the table."""
    stimulative = measure[roles(measure) == STIMULATIVE]
    if stimulative.empty:
        raise NotEnoughData("no runs of a stimulative method to compare with")
    first = stimulative[stimulative["method_order"] == stimulative["method_order"].min()]
    return arm_names(first["run"]).iloc[0]


def _per_run(measure: pd.DataFrame) -> pd.DataFrame:
    """Per run: arm, seed, main top-1 and NLL, sub-networks' mean and population std of top-1."""
    rows = []
    for run, rows_of_run in measure.groupby("run", sort=False):
        main, sub = rows_of_run[rows_of_run["is_main"]], rows_of_run.loc[~rows_of_run["is_main"], "top1"]
        rows.append({"run": run, "seed": rows_of_run["seed"].iloc[0], "main_top1": main["top1"].mean(),
                     "main_nll": main["loss"].mean(), "sub_mean": sub.mean() if len(sub) else np.nan,
                     "sub_std": sub.std(ddof=0) if len(sub) else np.nan})
    table = pd.DataFrame(rows)
    table["arm"] = arm_names(table["run"])
    return table


def _cost(log: pd.DataFrame) -> pd.DataFrame:
    """Per arm: seconds per training example in its fastest epoch and the largest peak memory."""
    if log is None or log.empty or "examples_per_s" not in log.columns:
        return pd.DataFrame(columns=["seconds_per_example", "peak_memory_mib", "memory_kind"])
    rows = full_runs(log).assign(arm=lambda d: arm_names(d["run"]), seconds_per_example=lambda d:
                                 1.0 / d["examples_per_s"])
    # The fastest epoch, not the mean: an epoch that shared the machine with other work is slower, never faster.
    return rows.groupby("arm").agg(seconds_per_example=("seconds_per_example", "min"),
                                   peak_memory_mib=("peak_memory_mib", "max"),
                                   memory_kind=("memory_kind", lambda k: ",".join(sorted(set(k.dropna().astype(str))))))


def table_ablation(measure: pd.DataFrame, log: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm: seeds, main top-1 and test NLL (raw logits, BN recalibrated), sub-networks' top-1 mean ± std; the
    main top-1 against the reference arm's of the same seed, the sub-networks against its same plans (mean and
    range over plans, descriptive) and, from three seeds, intervals over seeds; training time per step (fastest
    epochs) and peak memory relative to the reference arm."""
    whole = full_runs(measure)
    if whole.empty or not (~whole["is_main"]).any():
        raise NotEnoughData("no sub-networks measured in runs of the whole network")
    reference = reference_arm(whole)
    per_run = _per_run(whole)
    subs = whole[~whole["is_main"]].assign(arm=lambda d: arm_names(d["run"]))
    plan_means = subs.groupby(["arm", "plan"])["top1"].mean().unstack("plan")
    cost = _cost(log)
    ref_runs = per_run[per_run["arm"] == reference].set_index("seed")
    ref_cost = cost.loc[reference] if reference in cost.index else None
    rows = []
    for arm in dict.fromkeys(per_run["arm"]):
        runs = per_run[per_run["arm"] == arm].set_index("seed")
        compared = arm != reference
        by_plan = plan_differences(plan_means.loc[arm], plan_means.loc[reference]) if compared else None
        main_delta = (runs["main_top1"] - ref_runs["main_top1"]).dropna()
        by_seed = None
        if compared:
            common = plan_means.loc[[arm, reference]].dropna(axis=1).columns
            seed_means = {a: subs[(subs["arm"] == a) & subs["plan"].isin(common)].groupby("seed")["top1"].mean()
                          for a in (arm, reference)}
            by_seed = seed_paired_difference(seed_means[arm], seed_means[reference])
        known = arm in cost.index and ref_cost is not None
        rows.append({
            "arm": arm, "seeds": len(runs),
            "main top-1": runs["main_top1"].mean(),
            "main NLL": f"{runs['main_nll'].mean():.3f}",  # small on easy data: two decimals would hide it
            "sub-networks": f"{runs['sub_mean'].mean():.2f} ± {runs['sub_std'].mean():.2f}",
            f"main − {reference}, same seed": main_delta.mean() if compared and len(main_delta) else np.nan,
            "(95% CI)": interval_text(*seed_interval(main_delta, PERCENT_DIFFERENCE)) if compared else "–",
            f"sub-networks − {reference}, same plan (mean)": by_plan["mean"] if by_plan else np.nan,
            "same plan (range)": range_text(by_plan) if by_plan else "–",
            "same seed (95% CI)": interval_text(by_seed["low"], by_seed["high"]) if by_seed else "–",
            f"time/step vs {reference}": (cost.loc[arm, "seconds_per_example"] / ref_cost["seconds_per_example"]
                                          if known else np.nan),
            "peak memory (MiB)": cost.loc[arm, "peak_memory_mib"] if arm in cost.index else np.nan,
        })
    table = pd.DataFrame(rows)
    table.attrs["note"] = (
        f"The unit of replication is the training run (seed); an arm's runs share its name up to -seed<N>. "
        f"\"Main − {reference}, same seed\": each run's main network against the {reference} run of the same "
        f"seed. \"Sub-networks − {reference}, same plan\": each sub-network (averaged over the arm's seeds) "
        f"against the same plan of {reference}, {PLANS_DESCRIBED}. Intervals: {SEED_INTERVALS}. Time per step: "
        f"each arm's fastest epoch.")
    return table
