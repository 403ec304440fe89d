"""The paper's tables: pure functions `table_*(df) -> DataFrame`, and how a table is written (Markdown, PNG)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.table import Table

from loafing.figures.canvas import DPI, wrap_to_width

from loafing.figures.select import (NotEnoughData, add_scheme, add_space_size, at_reference_lam,
                                    conventionally_trained, full_runs, sampled_runs, network_names, ordered_plan_rows,
                                    per_plan_means, per_run_subnetwork_stats)
from loafing.figures.style import CONVENTIONAL, is_blank, schemes_of, use_style
from loafing.figures.stats import (PLANS_DESCRIBED, SEED_INTERVALS, interval_text, plan_differences, range_text,
                                   seed_interval, seed_paired_difference)


ROW_INCHES = 0.22  # a row of 7-point text with its padding
PAD_INCHES = 0.12  # around the table, its title and its note
MIN_WIDTH_INCHES = 4.0  # so that a narrow table's title and note wrap into few lines


def _sub_means_by_seed(measure: pd.DataFrame, label: str, plans: pd.Index) -> pd.Series:
    """Per seed, the mean top-1 of `label`'s sub-networks over `plans` (so two schemes compare the same plans)."""
    subs = measure[~measure["is_main"] & (measure["label"] == label) & measure["plan"].isin(plans)]
    return subs.groupby("seed")["top1"].mean()

NO_SPACE = ("no run of the whole network with its sub-networks measured as a space (an inside-vs-alone grid's "
            "architectures are the inside table's)")
# One definition of a run's training time, the one train_log.csv's `seconds` records per epoch.
TRAINING_TIME_NOTE = ("Training time: a run's training steps (forward, backward, update) summed over its epochs, "
                      "without the per-epoch evaluation, BN re-estimation (--bn-reestimate), KL records, "
                      "checkpoints and start-up that `loafing "
                      "reproduce`'s wall time also counts; averaged over seeds.")


def table_main_and_subnetworks(measure: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (every method): per scheme, main-network top-1 and sub-network mean/std top-1 with their spread
    over seeds; each scheme's sub-networks against CT's plan by plan (mean and range over plans, descriptive) and,
    from three seeds of both, seed by seed (a 95% t-interval over seeds)."""
    schemes = schemes_of(measure)
    ct = schemes.role_label(CONVENTIONAL) or "CT"
    shaped = add_space_size(at_reference_lam(full_runs(sampled_runs(measure))))
    stats = per_run_subnetwork_stats(shaped)
    if stats.empty:
        raise NotEnoughData(NO_SPACE)
    if stats["sub_mean"].isna().all():  # a table of main networks alone: Table r3 and the inside grid show them
        raise NotEnoughData("no sub-networks measured in runs of the whole network")
    plan_means = per_plan_means(shaped)
    rows = []
    for label in schemes.order(stats["label"]):
        runs = stats[stats["label"] == label]
        several = len(runs) >= 2
        paired = label != ct and ct in plan_means.index and label in plan_means.index
        by_plan = plan_differences(plan_means.loc[label], plan_means.loc[ct]) if paired else None
        by_seed = None
        if paired:
            common = plan_means.loc[[label, ct]].dropna(axis=1).columns
            by_seed = seed_paired_difference(_sub_means_by_seed(shaped, label, common),
                                             _sub_means_by_seed(shaped, ct, common))
        rows.append({"scheme": label, "seeds": len(runs),
                     "main top-1": runs["main_top1"].mean(),
                     "main top-1 seed std": runs["main_top1"].std(ddof=1) if several else np.nan,
                     "main top-1 95% CI (seeds)": interval_text(*seed_interval(runs["main_top1"])),
                     "sub-networks mean": runs["sub_mean"].mean(),
                     "sub-networks std": runs["sub_std"].mean(),
                     "sub-networks mean seed std": runs["sub_mean"].std(ddof=1) if several else np.nan,
                     f"sub-networks − {ct}, same plan (mean)": by_plan["mean"] if by_plan else np.nan,
                     "same plan (range)": range_text(by_plan) if by_plan else "–",
                     f"− {ct}, same seed (95% CI)": (interval_text(by_seed["low"], by_seed["high"]) if by_seed
                                                      else "–")})
    table = pd.DataFrame(rows)
    table.attrs["note"] = (
        f"The unit of replication is the training run (seed). Main top-1 and sub-networks mean: means over seeds; "
        f"sub-networks std: spread over the sub-networks of one network, averaged over seeds. "
        f"\"Sub-networks − {ct}, same plan\": each sub-network against the same plan of {ct} (both averaged over "
        f"their seeds), {PLANS_DESCRIBED}. Intervals: {SEED_INTERVALS} (\"same seed\": each seed's sub-network "
        f"mean against {ct}'s of the same seed, over the plans both measured).")
    return table


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
    table.attrs["note"] = TRAINING_TIME_NOTE
    return table


def table_methods(measure: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """Table r3: per training method, training time, peak memory, main-network top-1 and all sub-networks'
    top-1 as mean ± std (population std over the measured sub-networks, averaged over seeds)."""
    schemes = schemes_of(measure)
    stats = per_run_subnetwork_stats(add_space_size(at_reference_lam(full_runs(sampled_runs(measure)))))
    if stats.empty:
        raise NotEnoughData(NO_SPACE)
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
                     "all (%)": (f"{runs['sub_mean'].mean():.2f}±{runs['sub_std'].mean():.2f}"
                                 if runs["sub_mean"].notna().any() else "–")})
    table = pd.DataFrame(rows)
    table.attrs["note"] = ("Means over seeds; all: the sub-networks' mean ± their spread within one network. "
                           + TRAINING_TIME_NOTE)
    return table


def table_inside_grid(measure: pd.DataFrame) -> pd.DataFrame:
    """Sub-networks (rows) inside main networks (columns), the layout of Tables r5/r6: top-1 of each network's
    architecture inside each bigger conventionally trained network; where row = column each network on its own,
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
    # A host's own architecture without a name of its own is its row under the host's name: row = column.
    own_rows = {d: f"{host_names[m]} ({d})" for m, d in zip(hosts["model"], hosts["depths"]) if names[(m, d)] == d}
    table = []
    for model, depths in zip(architectures["model"], architectures["depths"]):
        label = names[(model, depths)]
        row = {"sub-network \\ main network": own_rows.get(depths, label) if label == depths else label}
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
    table = pd.DataFrame({
        "host": rows["run"], "scheme": rows["scheme"], "architecture": rows["architecture"].where(
            ~is_blank(rows["architecture"]), rows["depths"]),
        "alone": rows["alone_run"], "inside top-1": rows["top1_inside"], "alone top-1": rows["top1_alone"],
        "inside − alone [95% CI]": [f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}]" for g, lo, hi in
                                    zip(rows["gap"], rows["gap_ci_low"], rows["gap_ci_high"])],
        "test images": rows["n_examples"]})
    table.attrs["note"] = ("Inside − alone: each test image scored by both networks (paired over test images); the "
                           "interval is the test set's sampling uncertainty for these trained networks, not the "
                           "spread over training runs.")
    return table


def _cell_text(value: object) -> str:
    """How one table cell is written: floats with 2 decimals, missing values as a dash."""
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown_table(table: pd.DataFrame, title: str) -> str:
    """A small markdown document: the title as a heading, the table (numbers right-aligned), then its note."""
    aligns = ["---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns]
    lines = [f"# {title}", "", "| " + " | ".join(table.columns) + " |", "| " + " | ".join(aligns) + " |"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell_text(v) for v in row) + " |")
    if table.attrs.get("note"):  # what is compared with what, and over which samples
        lines += ["", table.attrs["note"]]
    return "\n".join(lines) + "\n"


def render_table(table: pd.DataFrame, title: str = "") -> Figure:
    """Draw a table as a figure (for a PNG next to the markdown): the title above it and its note below, wrapped
    to the table's width, and the figure as tall as the three need."""
    cells = [[_cell_text(v) for v in row] for row in table.itertuples(index=False)]
    use_style()
    fig = plt.figure(figsize=(6.0, 2.0), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.axis("off")
    # Drawn once at its natural size to learn its width; then again, filling the axes placed around it.
    width = _drawn_table(ax, cells, table.columns).get_window_extent(fig._get_renderer()).width / DPI
    ax.tables[0].remove()
    fig.set_figwidth(max(width + 2 * PAD_INCHES, MIN_WIDTH_INCHES))
    heights = {"table": ROW_INCHES * (len(cells) + 1)}
    texts = {}
    if title:
        texts["title"] = fig.suptitle(title, fontsize="medium", va="top")
    if table.attrs.get("note"):
        texts["note"] = fig.text(PAD_INCHES / fig.get_figwidth(), 0.0, table.attrs["note"], fontsize=6.5,
                                 va="bottom", ha="left", color="0.25")
    for name, text in texts.items():
        wrap_to_width(fig, text, fig.bbox.width - 2 * PAD_INCHES * DPI)
        heights[name] = text.get_window_extent(fig._get_renderer()).height / DPI
    total = sum(heights.values()) + PAD_INCHES * (len(heights) + 1)
    fig.set_figheight(total)
    top = total - PAD_INCHES
    if "title" in texts:
        texts["title"].set_y(top / total)
        top -= heights["title"] + PAD_INCHES
    table_width = width / fig.get_figwidth()
    ax.set_position(((1 - table_width) / 2, (top - heights["table"]) / total, table_width, heights["table"] / total))
    if "note" in texts:
        texts["note"].set_y(PAD_INCHES / total)
    _drawn_table(ax, cells, table.columns, bbox=(0.0, 0.0, 1.0, 1.0))
    return fig


def _drawn_table(ax: Axes, cells: list[list[str]], columns: pd.Index, bbox: tuple | None = None) -> Table:
    """The table drawn in `ax` in 7-point text, each column as wide as its widest cell (filling `bbox` if given)."""
    drawn = ax.table(cellText=cells, colLabels=list(columns), loc="center", cellLoc="center", bbox=bbox)
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    drawn.auto_set_column_width(list(range(len(columns))))
    return drawn
