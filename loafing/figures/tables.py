"""The paper's tables: pure functions `table_*(df) -> DataFrame`, and how a table is written (Markdown, PNG)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loafing.figures.select import (NotEnoughData, add_scheme, add_space_size, at_reference_lam,
                                    conventionally_trained, full_runs, network_names, ordered_plan_rows,
                                    per_plan_means, per_run_subnetwork_stats)
from loafing.figures.style import CONVENTIONAL, is_blank, schemes_of, use_style
from loafing.figures.stats import interval_text, mean_interval, p_text, paired_difference


def table_main_and_subnetworks(measure: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (every method): per scheme, main-network top-1 and sub-network mean/std top-1 with their spread
    over seeds, and each scheme's sub-networks against CT's, paired by plan (mean difference, 95% CI, paired-t
    and Wilcoxon p)."""
    schemes = schemes_of(measure)
    ct = schemes.role_label(CONVENTIONAL) or "CT"
    shaped = add_space_size(at_reference_lam(full_runs(measure)))
    stats = per_run_subnetwork_stats(shaped)
    if stats.empty:
        raise NotEnoughData("no runs of the whole network")
    plan_means = per_plan_means(shaped)
    rows = []
    for label in schemes.order(stats["label"]):
        runs = stats[stats["label"] == label]
        several = len(runs) >= 2
        versus_ct = (paired_difference(plan_means.loc[label], plan_means.loc[ct])
                     if label != ct and ct in plan_means.index and label in plan_means.index else None)
        rows.append({"scheme": label, "seeds": len(runs),
                     "main top-1": runs["main_top1"].mean(),
                     "main top-1 seed std": runs["main_top1"].std(ddof=1) if several else np.nan,
                     "main top-1 95% CI": interval_text(*mean_interval(runs["main_top1"])),
                     "sub-networks mean": runs["sub_mean"].mean(),
                     "sub-networks std": runs["sub_std"].mean(),
                     "sub-networks mean seed std": runs["sub_mean"].std(ddof=1) if several else np.nan,
                     f"sub-networks vs {ct} (paired)": versus_ct["mean"] if versus_ct else np.nan,
                     f"vs {ct} 95% CI": interval_text(versus_ct["low"], versus_ct["high"]) if versus_ct else "–",
                     f"vs {ct} p (t)": p_text(versus_ct["p_t"]) if versus_ct else "–",
                     f"vs {ct} p (Wilcoxon)": p_text(versus_ct["p_wilcoxon"]) if versus_ct else "–"})
    return pd.DataFrame(rows)


def table_cost(log: pd.DataFrame) -> pd.DataFrame:
    """Table r4 (every method): per scheme, training time, throughput and peak memory, and their ratios to CT."""
    schemes = schemes_of(log)
    ct_label = schemes.role_label(CONVENTIONAL) or "CT"
    rows = add_scheme(at_reference_lam(full_runs(log)))
    if rows.empty:
        raise NotEnoughData("no epochs of runs of the whole network")
    per_run = rows.groupby("run", as_index=False).agg(scheme=("scheme", "first"), seconds=("seconds", "sum"),
                                                      examples_per_s=("examples_per_s", "mean"),
                                                      peak_memory_mib=("peak_memory_mib", "max"),
                                                      memory_kind=("memory_kind", "first"))
    table = []
    for scheme in schemes.order(per_run["scheme"]):
        runs = per_run[per_run["scheme"] == scheme]
        table.append({"scheme": scheme, "seeds": len(runs), "training time (s)": runs["seconds"].mean(),
                      "examples/s": runs["examples_per_s"].mean(),
                      "peak memory (MiB)": runs["peak_memory_mib"].max(),
                      "memory kind": ",".join(sorted(set(runs["memory_kind"].dropna().astype(str))))})
    table = pd.DataFrame(table)
    ct = table[table["scheme"] == ct_label]
    ct_time = ct["training time (s)"].iloc[0] if len(ct) else np.nan
    ct_memory = ct["peak memory (MiB)"].iloc[0] if len(ct) else np.nan
    table[f"time vs {ct_label}"] = table["training time (s)"] / ct_time
    table[f"memory vs {ct_label}"] = table["peak memory (MiB)"] / ct_memory
    return table


def table_methods(measure: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """Table r3: per training method, training time, peak memory, main-network top-1 and all sub-networks'
    top-1 as mean ± std (population std over the measured sub-networks, averaged over seeds)."""
    schemes = schemes_of(measure)
    stats = per_run_subnetwork_stats(add_space_size(at_reference_lam(full_runs(measure))))
    if stats.empty:
        raise NotEnoughData("no runs of the whole network")
    try:
        cost = table_cost(log).set_index("scheme")
    except NotEnoughData:  # no train_log.csv beside measure.csv: the table shows accuracies only
        cost = pd.DataFrame()
    rows = []
    for scheme in schemes.order(stats["scheme"]):
        runs = stats[stats["scheme"] == scheme]
        known = scheme in cost.index
        rows.append({"method": scheme, "seeds": len(runs),
                     "time (s)": cost.loc[scheme, "training time (s)"] if known else np.nan,
                     "memory (MiB)": cost.loc[scheme, "peak memory (MiB)"] if known else np.nan,
                     "memory kind": cost.loc[scheme, "memory kind"] if known else "",
                     "main (%)": runs["main_top1"].mean(),
                     "all (%)": f"{runs['sub_mean'].mean():.2f}±{runs['sub_std'].mean():.2f}"})
    return pd.DataFrame(rows)


def table_inside_grid(measure: pd.DataFrame) -> pd.DataFrame:
    """Sub-networks (rows) inside main networks (columns), the layout of Tables r5/r6: top-1 of each network's
    architecture inside each bigger conventionally trained network; on the diagonal each network on its own,
    and a 'trained alone' column for sub-networks trained by themselves (`--plan`). Means over seeds."""
    rows = conventionally_trained(measure)
    whole = ordered_plan_rows(rows[is_blank(rows["trained_plan"])])
    alone = rows[~is_blank(rows["trained_plan"])]
    if whole.empty or not (~whole["is_main"]).any():
        raise NotEnoughData("no network measured inside a bigger one")
    mains = pd.concat([whole[whole["is_main"]], alone[alone["is_main"]]])
    architectures = mains.drop_duplicates("depths").sort_values(["n_blocks", "depths"])
    hosts = whole[whole["is_main"]].drop_duplicates("model").sort_values(["n_blocks", "model"])
    names = network_names(measure)
    host_names = {m: names[(m, d)] if names[(m, d)] != d else m for m, d in zip(hosts["model"], hosts["depths"])}
    table = []
    for model, depths in zip(architectures["model"], architectures["depths"]):
        row = {"sub-network \\ main network": names[(model, depths)]}
        for host, name in host_names.items():
            cells = whole[(whole["model"] == host) & (whole["depths"] == depths)]["top1"]
            row[name] = cells.mean() if len(cells) else np.nan
        if not alone.empty:
            cells = alone[alone["is_main"] & (alone["depths"] == depths)]["top1"]
            row["trained alone"] = cells.mean() if len(cells) else np.nan
        table.append(row)
    return pd.DataFrame(table)


def table_loafing_gap(gaps: pd.DataFrame) -> pd.DataFrame:
    """The loafing gap per host run and architecture trained alone: top-1 inside, alone, and inside − alone with
    its 95% CI paired over the test images."""
    if gaps.empty:
        raise NotEnoughData("no loafing_gap rows (an [inside] family with a network trained alone)")
    rows = add_scheme(gaps).sort_values(["method_order", "run", "depths"], na_position="last")
    return pd.DataFrame({
        "host": rows["run"] + " (" + rows["scheme"] + ")", "architecture": rows["architecture"].where(
            ~is_blank(rows["architecture"]), rows["depths"]),
        "alone": rows["alone_run"], "inside top-1": rows["top1_inside"], "alone top-1": rows["top1_alone"],
        "inside − alone [95% CI]": [f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}]" for g, lo, hi in
                                    zip(rows["gap"], rows["gap_ci_low"], rows["gap_ci_high"])],
        "test images": rows["n_examples"]})


def _cell_text(value: object) -> str:
    """How one table cell is written: floats with 2 decimals, missing values as a dash."""
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown_table(table: pd.DataFrame, title: str) -> str:
    """A small markdown document: the title as a heading, then the table (numbers right-aligned)."""
    aligns = ["---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns]
    lines = [f"# {title}", "", "| " + " | ".join(table.columns) + " |", "| " + " | ".join(aligns) + " |"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell_text(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def render_table(table: pd.DataFrame) -> Figure:
    """Draw a table as a figure (for a PNG next to the markdown)."""
    cells = [[_cell_text(v) for v in row] for row in table.itertuples(index=False)]
    widest = [max([len(str(c))] + [len(row[i]) for row in cells]) for i, c in enumerate(table.columns)]
    use_style()
    fig, ax = plt.subplots(figsize=(0.055 * sum(widest) + 0.3 * len(widest) + 0.5, 0.3 * len(table) + 1.1),
                           layout="constrained")
    ax.axis("off")
    drawn = ax.table(cellText=cells, colLabels=list(table.columns), loc="center", cellLoc="center")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    drawn.auto_set_column_width(list(range(len(table.columns))))
    drawn.scale(1.0, 1.3)
    return fig
