"""The paper's figures: pure functions `plot_*(df) -> Figure` over tidy results (see the registry in __init__)."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from loafing.figures.select import (NotEnoughData, add_scheme, add_space_size, at_reference_lam,
                                    conventional_and_stimulative, conventionally_trained, full_runs, label_palette,
                                    network_names, ordered_plan_rows, ordered_sampling,
                                    per_run_subnetwork_stats, stimulative_hosts)
from loafing.figures.style import (ALONE, ALONE_LABEL, CONVENTIONAL, STIMULATIVE, figure_legend, is_blank,
                                   schemes_of, use_style)


SHORT_LABEL = 12  # characters of a scheme's name that fit below a box
PANELS_PER_ROW = 3  # Fig. 4's panels, one per ST scheme, wrap into rows of this many


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


def plot_inside_vs_alone(measure: pd.DataFrame) -> Figure:
    """Fig. 1: top-1 of architectures inside bigger networks vs the same architectures trained alone (foreign
    checkpoints count as conventionally trained); stimulative hosts (full space, reference λ) get bars of their own."""
    ct = conventionally_trained(measure)
    main = ct["is_main"]
    alone = ct[main].assign(group=ALONE_LABEL)
    hosts = measure[measure.index.isin(ct.index) | measure.index.isin(stimulative_hosts(measure).index)]
    hosts = ordered_plan_rows(hosts)
    inside = add_scheme(hosts[~hosts["is_main"] & is_blank(hosts["trained_plan"])])
    inside = inside[inside["depths"].isin(set(alone["depths"]))]
    if inside.empty or not inside.index.isin(ct.index).any():
        raise NotEnoughData("no architecture appears both inside a CT network and trained alone")
    conventional = inside.index.isin(ct.index)
    # Hosts trained conventionally read "inside MODEL", as in the paper; the others say how they were trained
    # ("inside MODEL, ST (raw)": a scheme may hold parentheses of its own).
    inside = inside.assign(group=["inside " + model + ("" if usual else f", {scheme}")
                                  for model, scheme, usual in zip(inside["model"], inside["scheme"], conventional)])
    alone = alone[alone["depths"].isin(set(inside["depths"]))]
    both = pd.concat([inside, alone], ignore_index=True)
    # One value per run and architecture, so the error bars are over seeds.
    per_run = both.groupby(["group", "depths", "run"], as_index=False).agg(top1=("top1", "mean"),
                                                                            n_blocks=("n_blocks", "first"))
    known = network_names(both)
    labels = {}
    for depths, rows in both.groupby("depths"):
        names = {known[(model, depths)] for model in set(rows["model"])}
        labels[depths] = names.pop() if len(names) == 1 else depths
    per_run["architecture"] = per_run["depths"].map(labels)
    order = [labels[d] for d in per_run.sort_values(["n_blocks", "depths"])["depths"].drop_duplicates()]
    host_blocks = measure[measure["is_main"] & is_blank(measure["trained_plan"])].groupby("model")["n_blocks"].max()
    palette = {ALONE_LABEL: schemes_of(measure).colour(ALONE)}
    hue_order = [ALONE_LABEL]
    scheme_rank = {s: i for i, s in enumerate(schemes_of(measure).order(inside["scheme"]))}
    for usual, shades in ((True, "Blues_d"), (False, "Reds_d")):
        hosts = inside[conventional == usual].drop_duplicates("group")
        groups = [g for *_, g in sorted((host_blocks.get(m, 0), m, scheme_rank[s], g)
                                        for m, s, g in zip(hosts["model"], hosts["scheme"], hosts["group"]))]
        palette.update(zip(groups, sns.color_palette(shades, n_colors=max(len(groups), 1))))
        hue_order += groups

    use_style()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(order) + 2.5), 3.8), layout="constrained")
    sns.barplot(data=per_run, x="architecture", y="top1", hue="group", order=order, hue_order=hue_order,
                palette=palette, errorbar="sd", capsize=0.1, ax=ax)
    ax.set_xlabel("architecture")
    ax.set_ylabel("top-1 (%)")
    figure_legend(fig, [ax])
    return fig


def plot_subnetworks(measure: pd.DataFrame) -> Figure:
    """Fig. 4: top-1 of every ordered sub-network, CT vs each ST scheme, with sub-networks trained alone as stars."""
    schemes = schemes_of(measure)
    ct_label, st_label = schemes.role_label(CONVENTIONAL), schemes.role_label(STIMULATIVE)
    full = add_space_size(at_reference_lam(full_runs(conventional_and_stimulative(measure))))
    st_labels = schemes.order([label for label in full["label"] if st_label and label.startswith(st_label)])
    if ct_label not in set(full["label"]) or not st_labels:
        raise NotEnoughData("needs a CT run and at least one ST run")
    plan_order = full.drop_duplicates("plan").sort_values(["n_blocks", "plan"])
    x_of_plan = {plan: x for x, plan in enumerate(plan_order["plan"])}
    mean_per_plan = full.groupby(["label", "plan"], as_index=False)["top1"].mean()
    mean_per_plan["x"] = mean_per_plan["plan"].map(x_of_plan)
    palette = label_palette(full, schemes)
    alone = measure[~is_blank(measure["trained_plan"]) & measure["plan"].isin(set(x_of_plan))]
    alone_per_plan = alone.groupby("plan", as_index=False)["top1"].mean()
    alone_per_plan["x"] = alone_per_plan["plan"].map(x_of_plan)
    positions = plan_order.assign(x=range(len(plan_order))).groupby("n_blocks")["x"]
    group_centres, group_starts = positions.mean(), positions.min()

    use_style()
    ncols = min(len(st_labels), PANELS_PER_ROW)
    nrows = math.ceil(len(st_labels) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 3.8 * nrows), sharey=True, squeeze=False,
                             layout="constrained")
    for ax in grid.flatten()[len(st_labels):]:
        ax.remove()
    axes = grid.flatten()[:len(st_labels)]
    for ax, st_label in zip(axes, st_labels):
        for label in (ct_label, st_label):
            rows = mean_per_plan[mean_per_plan["label"] == label].sort_values("x")
            ax.plot(rows["x"], rows["top1"], marker="o", markersize=3, linewidth=0.7, color=palette[label],
                    label=label)
        if not alone_per_plan.empty:
            ax.scatter(alone_per_plan["x"], alone_per_plan["top1"], marker="*", s=120, color=schemes.colour(ALONE),
                       edgecolor="black", linewidth=0.4, zorder=3, label=ALONE_LABEL)
        ax.set_title(f"{ct_label} vs {st_label}")
        for start in group_starts.values[1:]:
            ax.axvline(start - 0.5, color="0.85", linewidth=0.6, zorder=0)
        ax.grid(False, axis="x")
        ax.set_xticks(list(group_centres.values), _sparse_labels(group_centres, min_gap=len(plan_order) / 30))
        ax.set_xlabel("sub-network (grouped by number of blocks)")
    for row in grid:
        row[0].set_ylabel("top-1 (%)")
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    legend_order = [label for label in [ct_label, *st_labels, ALONE_LABEL] if label in handles]
    figure_legend(fig, list(axes), entries=([handles[label] for label in legend_order], legend_order))
    return fig


def plot_space_size(measure: pd.DataFrame) -> Figure:
    """Fig. 5: max, mean and std of sub-network top-1 against the number of sub-networks sampled (0 = CT)."""
    schemes = schemes_of(measure)
    stats = per_run_subnetwork_stats(add_space_size(at_reference_lam(full_runs(conventional_and_stimulative(measure)))))
    stats = stats.dropna(subset=["sub_mean"])
    if stats["n_subnetworks"].nunique() < 3:  # two sizes, CT's 0 and one ST space, are Table 1's comparison
        raise NotEnoughData("needs at least three sampling-space sizes, CT and two ST spaces (CT against one ST "
                            "space is Table 1)")
    x_of_size = _categorical_x(stats["n_subnetworks"])
    stats["x"] = stats["n_subnetworks"].map(x_of_size)
    palette = label_palette(stats, schemes)
    panels = (("sub_max", "maximum top-1 (%)"), ("sub_mean", "mean top-1 (%)"), ("sub_std", "std of top-1 (%)"))

    use_style()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
    plain = stats[[schemes.split_variant(label) is None for label in stats["label"]]]  # not a method's variants
    for ax, (column, ylabel) in zip(axes, panels):
        means = plain.groupby("x")[column].mean()
        ax.plot(means.index, means.values, color="0.3", linewidth=1, zorder=1)
        for label in schemes.order(stats["label"]):
            rows = stats[stats["label"] == label]
            ax.scatter(rows["x"], rows[column], color=palette[label], s=25, zorder=2, label=label)
        ax.set_xticks(list(x_of_size.values()), [str(size) for size in x_of_size])
        ax.set_xlabel("sub-networks in the sampling space")
        ax.set_ylabel(ylabel)
    figure_legend(fig, list(axes))
    return fig


def plot_methods_subnetworks(measure: pd.DataFrame) -> Figure:
    """Fig. r8: top-1 of every measured sub-network under each training method (ST: ordered sampling, full space)."""
    styles = schemes_of(measure)
    rows = add_scheme(at_reference_lam(full_runs(measure[ordered_sampling(measure)])))
    rows = rows[is_blank(rows["space_size"])] if "space_size" in rows.columns else rows
    schemes = styles.order(rows["scheme"])
    if len(schemes) < 2:
        raise NotEnoughData("needs runs of at least two training methods")
    subs = rows[~rows["is_main"]]
    plan_order = subs.drop_duplicates("plan").sort_values(["n_blocks", "plan"])["plan"].tolist()
    x_of_plan = {plan: x for x, plan in enumerate(plan_order)}
    means = subs.groupby(["scheme", "plan"], as_index=False)["top1"].mean()
    means["x"] = means["plan"].map(x_of_plan)

    use_style()
    fig, (ax, box_ax) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=(3, 1), layout="constrained")
    for scheme in schemes:
        line = means[means["scheme"] == scheme].sort_values("x")
        ax.plot(line["x"], line["top1"], marker="o", markersize=2.5, linewidth=0.7, color=styles.colour(scheme),
                label=scheme)
    ax.set_xlabel("sub-network (sorted by number of blocks)")
    ax.set_ylabel("top-1 (%)")
    ax.set_xticks([])
    sns.boxplot(data=means, x="scheme", y="top1", hue="scheme", order=schemes, hue_order=schemes,
                palette=styles.palette(schemes), fliersize=2, linewidth=0.8, ax=box_ax)
    box_ax.set_xlabel("")
    box_ax.set_ylabel("sub-network top-1 (%)")
    if max(map(len, schemes)) > SHORT_LABEL:  # a method's variants: long names, told apart by the legend's colours
        box_ax.set_xticks(range(len(schemes)), [""] * len(schemes))
    else:
        box_ax.tick_params(axis="x", labelrotation=30)
    figure_legend(fig, [ax])
    return fig


def plot_sampling_rules(measure: pd.DataFrame) -> Figure:
    """Fig. 3: main-network top-1 and sub-network mean top-1 (± std over sub-networks) of ST per sampling rule,
    CT beside them."""
    styles = schemes_of(measure)
    rows = add_scheme(at_reference_lam(full_runs(conventional_and_stimulative(measure, any_sampling=True))))
    rows = rows[is_blank(rows["space_size"])] if "space_size" in rows.columns else rows
    stats = per_run_subnetwork_stats(rows.assign(label=rows["scheme"], n_subnetworks=0))
    st_label = styles.role_label(STIMULATIVE)
    rules = {s for s in stats["scheme"] if s == st_label or (styles.split_sampling(s) or ("",))[0] == st_label}
    if not st_label or len(rules) < 2:
        raise NotEnoughData("needs ST runs with at least two sampling rules (--sampling)")
    schemes = styles.order(stats["scheme"])
    per_scheme = stats.groupby("scheme")[["main_top1", "sub_mean", "sub_std"]].mean().reindex(schemes)
    panels = (("main_top1", None, "main network top-1 (%)"), ("sub_mean", "sub_std", "sub-network top-1 (%), mean ± std"))

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, (column, spread, ylabel) in zip(axes, panels):
        values = per_scheme[column]
        ax.bar(range(len(schemes)), values, yerr=per_scheme[spread] if spread else None, capsize=3,
               color=[styles.colour(s) for s in schemes])
        for x, value in enumerate(values):
            ax.annotate(f"{value:.2f}", (x, value), textcoords="offset points", xytext=(8, 3), fontsize=7)
        ax.margins(y=0.1)  # room above the tallest bar for its value
        ax.set_xticks(range(len(schemes)), schemes, rotation=15)
        ax.set_ylabel(ylabel)
    return fig


def plot_lambda(measure: pd.DataFrame) -> Figure:
    """Fig. r3: main-network and mean sub-network top-1 of full-space ST against λ, CT as a dashed line."""
    schemes = schemes_of(measure)
    ct_label, st_label = schemes.role_label(CONVENTIONAL), schemes.role_label(STIMULATIVE)
    stats = per_run_subnetwork_stats(add_space_size(full_runs(conventional_and_stimulative(measure))))
    st = stats[stats["scheme"] == st_label]
    ct = stats[stats["scheme"] == ct_label]
    if st["lam"].nunique() < 2:
        raise NotEnoughData("needs full-space ST runs with at least two different λ")
    x_of_lam = _categorical_x(st["lam"])
    st = st.assign(x=st["lam"].map(x_of_lam))
    panels = (("main_top1", "main network top-1 (%)"), ("sub_mean", "sub-network mean top-1 (%)"))

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, (column, ylabel) in zip(axes, panels):
        means = st.groupby("x")[column].mean()
        ax.plot(means.index, means.values, color=schemes.colour(st_label), linewidth=1, zorder=1)
        ax.scatter(st["x"], st[column], color=schemes.colour(st_label), s=25, zorder=2, label=st_label)
        if ct[column].notna().any():
            ax.axhline(ct[column].mean(), color=schemes.colour(ct_label), linestyle="--", linewidth=1, label=ct_label)
        ax.set_xticks(list(x_of_lam.values()), [_format_number(lam) for lam in x_of_lam])
        ax.set_xlabel("λ (weight of the KL loss)")
        ax.set_ylabel(ylabel)
    figure_legend(fig, list(axes))
    return fig
