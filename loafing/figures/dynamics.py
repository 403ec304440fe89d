"""Figs. 7 and r2: what happens during training, KL to the main network and the learning curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from loafing.figures.select import NotEnoughData, add_scheme, at_reference_lam, full_runs
from loafing.figures.style import CONVENTIONAL, STIMULATIVE, Schemes, figure_legend, schemes_of, use_style


def _plain_labels(schemes: Schemes) -> list[str]:
    """The conventional and the stimulative method's own labels ('CT', 'ST'): their full-space runs."""
    return [label for label in (schemes.role_label(CONVENTIONAL), schemes.role_label(STIMULATIVE)) if label]


def plot_kl(kl: pd.DataFrame) -> Figure:
    """Fig. 7: distribution of KL(main || sub-network) over sub-networks at each recorded epoch, CT vs ST."""
    schemes = schemes_of(kl)
    rows = add_scheme(at_reference_lam(full_runs(kl)))
    rows = rows[rows["scheme"].isin(_plain_labels(schemes)) & ~rows["is_main"]]
    if rows.empty:
        raise NotEnoughData("no sub-network rows of CT or full-space ST runs")
    hue_order = schemes.order(rows["scheme"])

    use_style()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * rows["epoch"].nunique() + 2.5), 3.8), layout="constrained")
    sns.boxplot(data=rows, x="epoch", y="kl", hue="scheme", hue_order=hue_order,
                palette=schemes.palette(hue_order), fliersize=2, linewidth=0.8, ax=ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("KL(main || sub-network)")
    figure_legend(fig, [ax])
    return fig


def plot_trajectories(log: pd.DataFrame) -> Figure:
    """Fig. r2: training loss and test top-1 per epoch, CT vs ST, with a star at each scheme's best test top-1."""
    schemes = schemes_of(log)
    rows = add_scheme(at_reference_lam(full_runs(log)))
    rows = rows[rows["scheme"].isin(_plain_labels(schemes))]
    if rows.empty:
        raise NotEnoughData("no epochs of CT or full-space ST runs")
    hue_order = schemes.order(rows["scheme"])
    palette = schemes.palette(hue_order)

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    panels = (("loss", "training loss"), ("test_top1_recalibrated", "test top-1, BN recalibrated (%)"))
    for ax, (column, ylabel) in zip(axes, panels):
        sns.lineplot(data=rows, x="epoch", y=column, hue="scheme", hue_order=hue_order, palette=palette,
                     errorbar="sd", ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    per_epoch = rows.groupby(["scheme", "epoch"])["test_top1_recalibrated"].mean()
    best = {scheme: per_epoch[scheme].idxmax() for scheme in hue_order}
    # The best values often lie a fraction of a point apart at the same epoch: the highest is labelled above its
    # star, the others stacked below theirs, so no two labels overlap.
    for rank, scheme in enumerate(sorted(hue_order, key=lambda s: -per_epoch[s][best[s]])):
        epoch, value = best[scheme], per_epoch[scheme][best[scheme]]
        axes[1].scatter([epoch], [value], marker="*", s=160, color=palette[scheme], edgecolor="black",
                        linewidth=0.5, zorder=3)
        axes[1].annotate(f"{value:.2f}", (epoch, value), textcoords="offset points", ha="center", fontsize=7,
                         color=palette[scheme], xytext=(0, 7) if rank == 0 else (0, -9 - 9 * rank),
                         va="bottom" if rank == 0 else "top")
    figure_legend(fig, list(axes))
    return fig
