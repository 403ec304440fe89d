"""The paper's figures and tables from tidy results CSVs: pure `plot_*(df) -> Figure` / `table_*(df) -> DataFrame`."""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loafing.errors import LoafingError
from loafing.io import atomic_path

SCHEME_COLOURS = {"CT": "#4c72b0", "ST": "#c44e52", "alone": "#55a868"}
# Restricted spaces (ST-K) get a colour from K itself, so ST-48 looks the same in every figure.
RESTRICTED_ST_COLOURS = ("#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
ALONE_LABEL = "trained alone"
TEXT_COLUMNS = ("run", "model", "method", "dataset", "trained_plan", "plan", "depths", "layers", "mode",
                "memory_kind", "space")


class NotEnoughData(LoafingError):
    """The data cannot make this figure (make_figures reports it as skipped, not as an error)."""


# ---------------------------------------------------------------------------------------------------------------
# Shared definitions


def use_style() -> None:
    """Apply the one plotting style every figure shares."""
    sns.set_theme(style="whitegrid", context="paper")


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


def is_main(df: pd.DataFrame) -> pd.Series:
    """The `is_main` column as booleans, whether pandas read it as bool or as text."""
    return df["is_main"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])


def run_scheme(method: str, trained_plan: object, space_size: object) -> str:
    """The training scheme of one run: 'alone', 'CT', 'ST' (full space) or 'ST-K' (restricted space)."""
    if not is_blank_cell(trained_plan):
        return "alone"
    if method == "ct":
        return "CT"
    if method == "st":
        if is_blank_cell(space_size):
            return "ST"
        return f"ST-{int(float(space_size))}"
    raise LoafingError(f"unknown method '{method}' (expected ct or st)")


def add_scheme(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` with a `scheme` column (see run_scheme)."""
    out = df.copy()
    out["scheme"] = [run_scheme(m, t, s) for m, t, s in zip(df["method"], df["trained_plan"], df["space_size"])]
    return out


def scheme_colour(scheme: str) -> str:
    """The fixed colour of a scheme ('CT', 'ST', 'ST-K', 'alone')."""
    if scheme in SCHEME_COLOURS:
        return SCHEME_COLOURS[scheme]
    if scheme.startswith("ST-") and scheme[3:].isdigit() and int(scheme[3:]) > 0:
        return RESTRICTED_ST_COLOURS[int(math.log2(int(scheme[3:]))) % len(RESTRICTED_ST_COLOURS)]
    raise LoafingError(f"unknown scheme '{scheme}' (expected CT, ST, ST-K or alone)")


def full_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs that trained the whole network (trained_plan empty)."""
    return df[is_blank(df["trained_plan"])]


def reference_lam(df: pd.DataFrame) -> float | None:
    """The λ shared by the most distinct ST runs (ties: the smallest); None without ST runs."""
    st = df[df["method"] == "st"]
    if st.empty:
        return None
    runs_per_lam = st.groupby("lam")["run"].nunique()
    return float(runs_per_lam[runs_per_lam == runs_per_lam.max()].index.min())


def at_reference_lam(df: pd.DataFrame) -> pd.DataFrame:
    """CT rows (any λ) plus the ST rows at the reference λ."""
    lam = reference_lam(df)
    if lam is None:
        return df
    return df[(df["method"] != "st") | (df["lam"] == lam)]


def add_space_size(measure: pd.DataFrame) -> pd.DataFrame:
    """A copy of `measure` with `n_subnetworks`: 0 for CT, K for ST-K, the measured plan count for full ST."""
    out = add_scheme(measure)
    plans_per_run = measure.groupby("run")["plan"].nunique()
    sizes = []
    for run, scheme, space_size in zip(out["run"], out["scheme"], out["space_size"]):
        if scheme in ("CT", "alone"):
            sizes.append(0)
        elif scheme == "ST":
            sizes.append(int(plans_per_run[run]))
        else:
            sizes.append(int(float(space_size)))
    out["n_subnetworks"] = sizes
    # Measure-based figures name the full space by its size ("ST-144"), so it sits beside ST-6 and ST-48.
    out["label"] = [s if s in ("CT", "alone") else f"ST-{n}" for s, n in zip(out["scheme"], out["n_subnetworks"])]
    return out


def label_palette(df: pd.DataFrame) -> dict[str, str]:
    """Colour of each `label` in `df`, taken from its scheme (full ST wins when a label is shared)."""
    palette: dict[str, str] = {}
    for label, scheme in zip(df["label"], df["scheme"]):
        if label not in palette or scheme == "ST":
            palette[label] = scheme_colour(scheme)
    return palette


def scheme_order(labels: Sequence[str]) -> list[str]:
    """Labels sorted CT first, then ST by growing sampling space (plain 'ST' last)."""
    def key(label: str) -> tuple[int, float, str]:
        if label == "CT":
            return (0, 0.0, label)
        if label.startswith("ST-") and label[3:].isdigit():
            return (1, float(label[3:]), label)
        if label == "ST":
            return (1, math.inf, label)
        return (2, 0.0, label)
    return sorted(set(labels), key=key)


def per_run_subnetwork_stats(measure: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its seed, scheme, label, n_subnetworks, λ, main top-1 and sub-network top-1 max/mean/std."""
    rows = []
    for run, rows_of_run in measure.groupby("run", sort=True):
        sub = rows_of_run.loc[~is_main(rows_of_run), "top1"]
        main = rows_of_run.loc[is_main(rows_of_run), "top1"]
        first = rows_of_run.iloc[0]
        rows.append({"run": run, "seed": first["seed"], "lam": first["lam"], "scheme": first["scheme"],
                     "label": first["label"], "n_subnetworks": first["n_subnetworks"],
                     "main_top1": main.mean() if len(main) else np.nan,
                     # The whole space is measured, so its spread is a population std (ddof=0).
                     "sub_max": sub.max() if len(sub) else np.nan, "sub_mean": sub.mean() if len(sub) else np.nan,
                     "sub_std": sub.std(ddof=0) if len(sub) else np.nan})
    return pd.DataFrame(rows)


def _figure_legend(fig: Figure, axes: Sequence[Axes], ncols: int | None = None) -> None:
    """Replace the axes' legends by one figure legend below the panels."""
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 6), frameon=False)


def _categorical_x(values: Sequence[float]) -> dict[float, int]:
    """Evenly spaced x positions for sorted distinct values (sizes and λ span orders of magnitude and include 0)."""
    return {value: position for position, value in enumerate(sorted(set(values)))}


def _sparse_labels(centres: pd.Series, min_gap: float) -> list[str]:
    """Tick labels (the index) for tick positions (the values), blank where a label would touch the previous one."""
    labels, last = [], -math.inf
    for label, position in centres.items():
        keep = position - last >= min_gap
        labels.append(str(label) if keep else "")
        last = position if keep else last
    return labels


def _format_number(value: float) -> str:
    """Short tick label: 6 not 6.0, 0.5 stays 0.5."""
    return f"{value:g}"


# ---------------------------------------------------------------------------------------------------------------
# Figures


def plot_inside_vs_alone(measure: pd.DataFrame) -> Figure:
    """Fig. 1: top-1 of architectures inside bigger CT networks vs the same architectures trained alone."""
    require_columns(measure, ("run", "model", "method", "trained_plan", "depths", "n_blocks", "is_main", "top1"),
                    "measure.csv")
    ct = measure[measure["method"] == "ct"]
    main = is_main(ct)
    alone = ct[main].assign(group=ALONE_LABEL)
    inside = ct[~main & is_blank(ct["trained_plan"])]
    inside = inside[inside["depths"].isin(set(alone["depths"]))]
    if inside.empty:
        raise NotEnoughData("no architecture appears both inside a CT network and trained alone")
    inside = inside.assign(group="inside " + inside["model"])
    alone = alone[alone["depths"].isin(set(inside["depths"]))]
    both = pd.concat([inside, alone], ignore_index=True)
    # One value per run and architecture, so the error bars are over seeds.
    per_run = both.groupby(["group", "depths", "run"], as_index=False).agg(top1=("top1", "mean"),
                                                                            n_blocks=("n_blocks", "first"))
    labels = {}
    for depths, rows in both.groupby("depths"):
        models = set(rows["model"])
        n_blocks = int(rows["n_blocks"].iloc[0])
        cifar_resnet = all(fnmatch.fnmatch(m, "resnet*-cifar") for m in models)
        labels[depths] = f"ResNet{2 * n_blocks + 2}" if cifar_resnet else depths
    per_run["architecture"] = per_run["depths"].map(labels)
    order = [labels[d] for d in per_run.sort_values(["n_blocks", "depths"])["depths"].drop_duplicates()]
    host_blocks = ct[main & is_blank(ct["trained_plan"])].groupby("model")["n_blocks"].max()
    hosts = sorted(set(inside["model"]), key=lambda m: (host_blocks.get(m, 0), m))
    hue_order = [ALONE_LABEL] + [f"inside {m}" for m in hosts]
    host_colours = sns.color_palette("Blues_d", n_colors=len(hosts))
    palette = {ALONE_LABEL: scheme_colour("alone")}
    palette.update({f"inside {m}": colour for m, colour in zip(hosts, host_colours)})

    use_style()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(order) + 2.5), 3.8), layout="constrained")
    sns.barplot(data=per_run, x="architecture", y="top1", hue="group", order=order, hue_order=hue_order,
                palette=palette, errorbar="sd", capsize=0.1, ax=ax)
    ax.set_xlabel("architecture")
    ax.set_ylabel("top-1 (%)")
    _figure_legend(fig, [ax])
    return fig


def plot_subnetworks(measure: pd.DataFrame) -> Figure:
    """Fig. 4: top-1 of every ordered sub-network, CT vs each ST scheme, with sub-networks trained alone as stars."""
    require_columns(measure, ("run", "method", "lam", "seed", "trained_plan", "space_size", "plan", "n_blocks",
                              "is_main", "top1"), "measure.csv")
    full = add_space_size(at_reference_lam(full_runs(measure)))
    st_labels = scheme_order([label for label in full["label"] if label.startswith("ST")])
    if "CT" not in set(full["label"]) or not st_labels:
        raise NotEnoughData("needs a CT run and at least one ST run")
    plan_order = full.drop_duplicates("plan").sort_values(["n_blocks", "plan"])
    x_of_plan = {plan: x for x, plan in enumerate(plan_order["plan"])}
    mean_per_plan = full.groupby(["label", "plan"], as_index=False)["top1"].mean()
    mean_per_plan["x"] = mean_per_plan["plan"].map(x_of_plan)
    palette = label_palette(full)
    alone = measure[~is_blank(measure["trained_plan"]) & measure["plan"].isin(set(x_of_plan))]
    alone_per_plan = alone.groupby("plan", as_index=False)["top1"].mean()
    alone_per_plan["x"] = alone_per_plan["plan"].map(x_of_plan)
    positions = plan_order.assign(x=range(len(plan_order))).groupby("n_blocks")["x"]
    group_centres, group_starts = positions.mean(), positions.min()

    use_style()
    fig, axes = plt.subplots(1, len(st_labels), figsize=(6.0 * len(st_labels), 3.8), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, st_label in zip(axes[0], st_labels):
        for label in ("CT", st_label):
            rows = mean_per_plan[mean_per_plan["label"] == label].sort_values("x")
            ax.plot(rows["x"], rows["top1"], marker="o", markersize=3, linewidth=0.7, color=palette[label],
                    label=label)
        if not alone_per_plan.empty:
            ax.scatter(alone_per_plan["x"], alone_per_plan["top1"], marker="*", s=120, color=scheme_colour("alone"),
                       edgecolor="black", linewidth=0.4, zorder=3, label=ALONE_LABEL)
        ax.set_title(f"CT vs {st_label}")
        for start in group_starts.values[1:]:
            ax.axvline(start - 0.5, color="0.85", linewidth=0.6, zorder=0)
        ax.grid(False, axis="x")
        ax.set_xticks(list(group_centres.values), _sparse_labels(group_centres, min_gap=len(plan_order) / 30))
        ax.set_xlabel("sub-network (grouped by number of blocks)")
    axes[0][0].set_ylabel("top-1 (%)")
    handles: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    legend_order = [label for label in ["CT", *st_labels, ALONE_LABEL] if label in handles]
    fig.legend([handles[label] for label in legend_order], legend_order, loc="outside lower center",
               ncols=len(legend_order), frameon=False)
    return fig


def plot_space_size(measure: pd.DataFrame) -> Figure:
    """Fig. 5: max, mean and std of sub-network top-1 against the number of sub-networks sampled (0 = CT)."""
    require_columns(measure, ("run", "method", "lam", "seed", "trained_plan", "space_size", "plan", "is_main",
                              "top1"), "measure.csv")
    stats = per_run_subnetwork_stats(add_space_size(at_reference_lam(full_runs(measure))))
    stats = stats.dropna(subset=["sub_mean"])
    if stats["n_subnetworks"].nunique() < 2:
        raise NotEnoughData("needs runs with at least two different sampling-space sizes")
    x_of_size = _categorical_x(stats["n_subnetworks"])
    stats["x"] = stats["n_subnetworks"].map(x_of_size)
    palette = label_palette(stats)
    panels = (("sub_max", "maximum top-1 (%)"), ("sub_mean", "mean top-1 (%)"), ("sub_std", "std of top-1 (%)"))

    use_style()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
    for ax, (column, ylabel) in zip(axes, panels):
        means = stats.groupby("x")[column].mean()
        ax.plot(means.index, means.values, color="0.3", linewidth=1, zorder=1)
        for label in scheme_order(stats["label"]):
            rows = stats[stats["label"] == label]
            ax.scatter(rows["x"], rows[column], color=palette[label], s=25, zorder=2, label=label)
        ax.set_xticks(list(x_of_size.values()), [str(size) for size in x_of_size])
        ax.set_xlabel("sub-networks in the sampling space")
        ax.set_ylabel(ylabel)
    _figure_legend(fig, list(axes))
    return fig


def plot_destruct(destruct: pd.DataFrame) -> Figure:
    """Fig. 6: top-1 drop after deleting one layer, deleting several layers and permuting layers."""
    require_columns(destruct, ("run", "method", "lam", "seed", "trained_plan", "space_size", "mode", "n", "layers",
                               "drop"), "destruct.csv")
    rows = add_scheme(at_reference_lam(full_runs(destruct)))
    rows = rows[rows["n"] > 0]
    modes = [mode for mode in ("delete-one", "delete-many", "permute") if mode in set(rows["mode"])]
    if not modes:
        raise NotEnoughData("no delete-one, delete-many or permute rows with n > 0")
    hue_order = scheme_order(rows["scheme"])
    palette = {scheme: scheme_colour(scheme) for scheme in hue_order}
    titles = {"delete-one": "(a) deleting one layer", "delete-many": "(b) deleting several layers",
              "permute": "(c) permuting layers"}
    xlabels = {"delete-one": "deleted layer", "delete-many": "deleted layers",
               "permute": "permuting operations"}

    use_style()
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.4), squeeze=False, layout="constrained")
    for ax, mode in zip(axes[0], modes):
        mode_rows = rows[rows["mode"] == mode]
        if mode == "delete-one":
            mode_rows = mode_rows.assign(layer=[int(float(v)) for v in mode_rows["layers"]])
            sns.barplot(data=mode_rows, x="layer", y="drop", hue="scheme", hue_order=hue_order, palette=palette,
                        errorbar="sd", ax=ax)
        else:
            sns.boxplot(data=mode_rows, x="n", y="drop", hue="scheme", hue_order=hue_order, palette=palette,
                        fliersize=2, linewidth=0.8, ax=ax)
        ax.set_title(titles[mode])
        ax.set_xlabel(xlabels[mode])
        ax.set_ylabel("top-1 drop (%)")
    _figure_legend(fig, list(axes[0]))
    return fig


def plot_kl(kl: pd.DataFrame) -> Figure:
    """Fig. 7: distribution of KL(main || sub-network) over sub-networks at each recorded epoch, CT vs ST."""
    require_columns(kl, ("run", "method", "lam", "seed", "trained_plan", "space_size", "epoch", "is_main", "kl"),
                    "kl_trajectory.csv")
    rows = add_scheme(at_reference_lam(full_runs(kl)))
    rows = rows[rows["scheme"].isin(["CT", "ST"]) & ~is_main(rows)]
    if rows.empty:
        raise NotEnoughData("no sub-network rows of CT or full-space ST runs")
    hue_order = scheme_order(rows["scheme"])

    use_style()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * rows["epoch"].nunique() + 2.5), 3.8), layout="constrained")
    sns.boxplot(data=rows, x="epoch", y="kl", hue="scheme", hue_order=hue_order,
                palette={s: scheme_colour(s) for s in hue_order}, fliersize=2, linewidth=0.8, ax=ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("KL(main || sub-network)")
    _figure_legend(fig, [ax])
    return fig


def plot_trajectories(log: pd.DataFrame) -> Figure:
    """Fig. r2: training loss and test top-1 per epoch, CT vs ST, with a star at each scheme's best test top-1."""
    require_columns(log, ("run", "method", "lam", "seed", "trained_plan", "space_size", "epoch", "loss",
                          "test_top1"), "train_log.csv")
    rows = add_scheme(at_reference_lam(full_runs(log)))
    rows = rows[rows["scheme"].isin(["CT", "ST"])]
    if rows.empty:
        raise NotEnoughData("no epochs of CT or full-space ST runs")
    hue_order = scheme_order(rows["scheme"])
    palette = {s: scheme_colour(s) for s in hue_order}

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, column, ylabel in zip(axes, ("loss", "test_top1"), ("training loss", "test top-1 (%)")):
        sns.lineplot(data=rows, x="epoch", y=column, hue="scheme", hue_order=hue_order, palette=palette,
                     errorbar="sd", ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    for scheme in hue_order:
        mean_per_epoch = rows[rows["scheme"] == scheme].groupby("epoch")["test_top1"].mean()
        best_epoch = mean_per_epoch.idxmax()
        axes[1].scatter([best_epoch], [mean_per_epoch[best_epoch]], marker="*", s=160, color=palette[scheme],
                        edgecolor="black", linewidth=0.5, zorder=3)
        axes[1].annotate(f"{mean_per_epoch[best_epoch]:.2f}", (best_epoch, mean_per_epoch[best_epoch]),
                         textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    _figure_legend(fig, list(axes))
    return fig


def plot_lambda(measure: pd.DataFrame) -> Figure:
    """Fig. r3: main-network and mean sub-network top-1 of full-space ST against λ, CT as a dashed line."""
    require_columns(measure, ("run", "method", "lam", "seed", "trained_plan", "space_size", "plan", "is_main",
                              "top1"), "measure.csv")
    stats = per_run_subnetwork_stats(add_space_size(full_runs(measure)))
    st = stats[stats["scheme"] == "ST"]
    ct = stats[stats["scheme"] == "CT"]
    if st["lam"].nunique() < 2:
        raise NotEnoughData("needs full-space ST runs with at least two different λ")
    x_of_lam = _categorical_x(st["lam"])
    st = st.assign(x=st["lam"].map(x_of_lam))
    panels = (("main_top1", "main network top-1 (%)"), ("sub_mean", "sub-network mean top-1 (%)"))

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, (column, ylabel) in zip(axes, panels):
        means = st.groupby("x")[column].mean()
        ax.plot(means.index, means.values, color=scheme_colour("ST"), linewidth=1, zorder=1)
        ax.scatter(st["x"], st[column], color=scheme_colour("ST"), s=25, zorder=2, label="ST")
        if ct[column].notna().any():
            ax.axhline(ct[column].mean(), color=scheme_colour("CT"), linestyle="--", linewidth=1, label="CT")
        ax.set_xticks(list(x_of_lam.values()), [_format_number(lam) for lam in x_of_lam])
        ax.set_xlabel("λ (weight of the KL loss)")
        ax.set_ylabel(ylabel)
    _figure_legend(fig, list(axes))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Tables


def table_main_and_subnetworks(measure: pd.DataFrame) -> pd.DataFrame:
    """Table 1: per scheme, main-network top-1 and sub-network mean/std top-1 with their spread over seeds."""
    require_columns(measure, ("run", "method", "lam", "seed", "trained_plan", "space_size", "plan", "is_main",
                              "top1"), "measure.csv")
    stats = per_run_subnetwork_stats(add_space_size(at_reference_lam(full_runs(measure))))
    if stats.empty:
        raise NotEnoughData("no full CT or ST runs")
    rows = []
    for label in scheme_order(stats["label"]):
        runs = stats[stats["label"] == label]
        rows.append({"scheme": label, "seeds": len(runs),
                     "main top-1": runs["main_top1"].mean(),
                     "main top-1 seed std": runs["main_top1"].std(ddof=1) if len(runs) >= 2 else np.nan,
                     "sub-networks mean": runs["sub_mean"].mean(),
                     "sub-networks std": runs["sub_std"].mean(),
                     "sub-networks mean seed std": runs["sub_mean"].std(ddof=1) if len(runs) >= 2 else np.nan})
    return pd.DataFrame(rows)


def table_cost(log: pd.DataFrame) -> pd.DataFrame:
    """Table r4: per scheme, training time, throughput and peak memory, and their ratios to CT."""
    require_columns(log, ("run", "method", "lam", "seed", "trained_plan", "space_size", "seconds",
                          "examples_per_s", "peak_memory_mib", "memory_kind"), "train_log.csv")
    rows = add_scheme(at_reference_lam(full_runs(log)))
    if rows.empty:
        raise NotEnoughData("no epochs of full CT or ST runs")
    per_run = rows.groupby("run", as_index=False).agg(scheme=("scheme", "first"), seconds=("seconds", "sum"),
                                                      examples_per_s=("examples_per_s", "mean"),
                                                      peak_memory_mib=("peak_memory_mib", "max"),
                                                      memory_kind=("memory_kind", "first"))
    table = []
    for scheme in scheme_order(per_run["scheme"]):
        runs = per_run[per_run["scheme"] == scheme]
        table.append({"scheme": scheme, "seeds": len(runs), "training time (s)": runs["seconds"].mean(),
                      "examples/s": runs["examples_per_s"].mean(),
                      "peak memory (MiB)": runs["peak_memory_mib"].max(),
                      "memory kind": ",".join(sorted(set(runs["memory_kind"].dropna().astype(str))))})
    table = pd.DataFrame(table)
    ct = table[table["scheme"] == "CT"]
    ct_time = ct["training time (s)"].iloc[0] if len(ct) else np.nan
    ct_memory = ct["peak memory (MiB)"].iloc[0] if len(ct) else np.nan
    table["time vs CT"] = table["training time (s)"] / ct_time
    table["memory vs CT"] = table["peak memory (MiB)"] / ct_memory
    return table


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


# ---------------------------------------------------------------------------------------------------------------
# Registry and driver


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One of the paper's figures or tables: where its data comes from and how it is drawn."""

    name: str
    title: str
    csv: str
    function: Callable[[pd.DataFrame], Figure | pd.DataFrame]
    kind: str  # "figure" | "table"
    group_by: tuple[str, ...] = ("model", "dataset")


@dataclasses.dataclass
class FigureOutcome:
    """What make_figures did for one figure (and one model/dataset group when the results mix several)."""

    name: str
    paths: list[Path]
    skipped: str | None = None
    group: str = ""


FIGURES: dict[str, FigureSpec] = {spec.name: spec for spec in (
    # Fig. 1 compares different host models, so only the data set splits it.
    FigureSpec("fig1", "Fig. 1: sub-networks inside bigger networks vs trained alone", "measure.csv",
               plot_inside_vs_alone, "figure", group_by=("dataset",)),
    FigureSpec("fig4", "Fig. 4: sub-networks inside the network", "measure.csv", plot_subnetworks, "figure"),
    FigureSpec("fig5", "Fig. 5: sub-network top-1 vs sampling-space size", "measure.csv", plot_space_size,
               "figure"),
    FigureSpec("fig6", "Fig. 6: top-1 drop when deleting or permuting layers", "destruct.csv", plot_destruct,
               "figure"),
    FigureSpec("fig7", "Fig. 7: KL(main || sub-network) during training", "kl_trajectory.csv", plot_kl, "figure"),
    FigureSpec("figr2", "Fig. r2: training loss and test top-1", "train_log.csv", plot_trajectories, "figure"),
    FigureSpec("figr3", "Fig. r3: effect of λ on stimulative training", "measure.csv", plot_lambda, "figure"),
    FigureSpec("table1", "Table 1: main network and sub-networks top-1 (%)", "measure.csv",
               table_main_and_subnetworks, "table"),
    FigureSpec("tabler4", "Table r4: training time and memory", "train_log.csv", table_cost, "table"),
)}


def read_results_csv(path: str | Path) -> pd.DataFrame:
    """Read a results CSV with identifier columns as text (depths "3" must not become the number 3)."""
    try:
        return pd.read_csv(path, dtype={column: "string" for column in TEXT_COLUMNS})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def split_groups(df: pd.DataFrame, group_by: Sequence[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(file-name suffix, title context, rows) per group; a single group gets no suffix."""
    groups = list(df.groupby(list(group_by), dropna=False, sort=True))
    out = []
    for keys, rows in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        names = [str(k) for k in keys]
        suffix = "" if len(groups) == 1 else "-" + "-".join(names)
        out.append((suffix, ", ".join(names), rows))
    return out


def _save_figure(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically and free it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=150)
    finally:
        plt.close(fig)


def _write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def make_figures(results_dir: str | Path, out_dir: str | Path,
                 names: Sequence[str] | None = None) -> list[FigureOutcome]:
    """Draw the named (default: all) figures and tables from the CSVs in `results_dir` into `out_dir`."""
    names = list(FIGURES) if names is None else list(names)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise LoafingError(f"unknown figure '{unknown[0]}'; valid names: {', '.join(FIGURES)}")
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    outcomes = []
    for name in names:
        spec = FIGURES[name]
        csv_path = results_dir / spec.csv
        if not csv_path.exists():
            outcomes.append(FigureOutcome(name, [], f"{spec.csv} not found"))
            continue
        if spec.csv not in tables:
            tables[spec.csv] = read_results_csv(csv_path)
        data = tables[spec.csv]
        if data.empty:
            outcomes.append(FigureOutcome(name, [], f"{spec.csv} has no rows"))
            continue
        require_columns(data, spec.group_by, spec.csv)
        for suffix, context, rows in split_groups(data, spec.group_by):
            try:
                result = spec.function(rows)
            except NotEnoughData as reason:
                outcomes.append(FigureOutcome(name, [], str(reason), suffix.lstrip("-")))
                continue
            title = f"{spec.title}\n{context}"
            png = out_dir / f"{name}{suffix}.png"
            if spec.kind == "table":
                markdown = out_dir / f"{name}{suffix}.md"
                _write_text(markdown_table(result, f"{spec.title} ({context})"), markdown)
                fig = render_table(result)
                fig.suptitle(title, fontsize="medium")
                _save_figure(fig, png)
                outcomes.append(FigureOutcome(name, [markdown, png], None, suffix.lstrip("-")))
            else:
                result.suptitle(title, fontsize="medium")
                _save_figure(result, png)
                outcomes.append(FigureOutcome(name, [png], None, suffix.lstrip("-")))
    return outcomes


def script_main(name: str, argv: Sequence[str] | None = None) -> None:
    """Command line of one figures/ script: --results DIR --out DIR, then draw figure `name`."""
    parser = argparse.ArgumentParser(description=FIGURES[name].title if name in FIGURES else name)
    parser.add_argument("--results", default="results/quick",
                        help="folder holding the results CSVs (default: %(default)s)")
    parser.add_argument("--out", default="figures/quick", help="folder to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        outcomes = make_figures(args.results, args.out, [name])
    except LoafingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for outcome in outcomes:
        label = f"{outcome.name} ({outcome.group})" if outcome.group else outcome.name
        if outcome.skipped is not None:
            print(f"{label}: skipped: {outcome.skipped}")
        for path in outcome.paths:
            print(path)
