"""Fig. 6 and Figs. r4-r7: the top-1 drop of destroyed networks (pure `plot_*(df) -> Figure`)."""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from loafing.figures.select import (NotEnoughData, add_scheme, at_reference_lam, conventional_and_stimulative,
                                    full_runs, of_methods, ordered_sampling)
from loafing.figures.style import figure_legend, schemes_of, use_style
from loafing.method_styles import FOREIGN_METHOD


def plot_destruct(destruct: pd.DataFrame, also: Sequence[str] = ()) -> Figure:
    """Fig. 6 (Figs. r4-r7 with a baseline in `also`): top-1 drop after deleting one layer, deleting several layers
    and permuting layers, CT and ST, foreign checkpoints (trained the usual way: the paper's own, say) and the
    methods `also` names."""
    schemes = schemes_of(destruct)
    foreign = destruct[destruct["method"] == FOREIGN_METHOD]
    chosen = pd.concat([conventional_and_stimulative(destruct), foreign,
                        destruct[destruct["method"].isin(also) & ordered_sampling(destruct)]]).drop_duplicates()
    if chosen.empty:
        raise NotEnoughData(f"no rows of CT, ST, a foreign checkpoint{''.join(f' or {m}' for m in also)} "
                            f"(the rows are of {', '.join(sorted(set(destruct['method'].astype(str))))})")
    rows = add_scheme(at_reference_lam(full_runs(chosen)))
    if rows.empty:
        raise NotEnoughData("no rows of a network trained whole (only of networks trained as one plan, --plan)")
    rows = rows[rows["n"] > 0]
    modes = [mode for mode in ("delete-one", "delete-many", "permute") if mode in set(rows["mode"])]
    if not modes:
        raise NotEnoughData("only rows of intact networks (n = 0): no layer deleted or permuted")
    hue_order = schemes.order(rows["scheme"])
    palette = schemes.palette(hue_order)
    titles = {"delete-one": "(a) deleting one layer", "delete-many": "(b) deleting several layers",
              "permute": "(c) permuting layers"}
    xlabels = {"delete-one": "deleted layer", "delete-many": "deleted layers",
               "permute": "permuting operations"}

    use_style()
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.4), squeeze=False, layout="constrained")
    for ax, mode in zip(axes[0], modes):
        mode_rows = rows[rows["mode"] == mode]
        if mode == "delete-one":
            mode_rows = mode_rows.assign(layer=mode_rows["layers"].astype(int))
            sns.barplot(data=mode_rows, x="layer", y="drop", hue="scheme", hue_order=hue_order, palette=palette,
                        errorbar="sd", ax=ax)
        else:
            sns.boxplot(data=mode_rows, x="n", y="drop", hue="scheme", hue_order=hue_order, palette=palette,
                        fliersize=2, linewidth=0.8, ax=ax)
        ax.set_title(titles[mode])
        ax.set_xlabel(xlabels[mode])
        ax.set_ylabel("top-1 drop (%)")
    figure_legend(fig, list(axes[0]))
    return fig


def destruct_beside(baseline: str) -> Callable[[pd.DataFrame], Figure]:
    """Figs. r4-r7: the Fig. 6 trio for `baseline` beside CT and ST."""
    def plot(destruct: pd.DataFrame) -> Figure:
        return plot_destruct(of_methods(destruct, (baseline,)), (baseline,))
    plot.__doc__ = f"The Fig. 6 trio for {baseline} beside CT and ST."
    return plot
