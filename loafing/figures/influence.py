"""Block influence per block beside the top-1 drop of deleting that block (pure `plot_influence(df) -> Figure`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loafing.figures.select import NotEnoughData, add_scheme
from loafing.figures.style import figure_legend, schemes_of, use_style

HATCHES = ("", "//", "..", "xx", "\\\\", "++")  # runs of one scheme (seeds) told apart in the bars ...
LINESTYLES = ("-", "--", ":", "-.")  # ... and in the lines


def run_labels(df: pd.DataFrame) -> dict[str, str]:
    """Each run's label in the legend: its scheme ('CT', 'ST'), with the run's name where runs share a scheme
    ('ST: st-seed1'; a scheme may hold parentheses of its own, 'ST (raw)')."""
    firsts = add_scheme(df.drop_duplicates("run"))
    shared = firsts["scheme"].duplicated(keep=False)
    return {str(run): f"{scheme}: {run}" if several else str(scheme)
            for run, scheme, several in zip(firsts["run"], firsts["scheme"], shared)}


def plot_influence(influence: pd.DataFrame) -> Figure:
    """Per block, its influence (1 - cosine of its input and output; bars, one per run) above the top-1 drop when
    that block alone is deleted (one line per run; blocks that cannot be deleted are shaded)."""
    rows = add_scheme(influence)
    if rows["influence"].notna().sum() == 0 and rows["top1_drop"].notna().sum() == 0:
        raise NotEnoughData("no block has an influence or a drop (every block changes its input's shape)")
    schemes = schemes_of(rows)
    labels = run_labels(rows)
    firsts = rows.drop_duplicates("run")
    rank = {s: i for i, s in enumerate(schemes.order(firsts["scheme"]))}
    runs = sorted(firsts["run"].astype(str), key=lambda r: (rank[str(firsts.set_index("run").loc[r, "scheme"])], r))
    blocks = sorted(rows["block"].unique())
    position = {b: i for i, b in enumerate(blocks)}
    width = 0.8 / len(runs)

    use_style()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(5.0, 0.32 * len(blocks) + 2.5), 5.2),
                                      layout="constrained")
    seen_per_scheme: dict[str, int] = {}
    for i, run in enumerate(runs):
        mine = rows[rows["run"].astype(str) == run].sort_values("block")
        scheme = str(mine["scheme"].iloc[0])
        k = seen_per_scheme.get(scheme, 0)
        seen_per_scheme[scheme] = k + 1
        colour = schemes.colour(scheme)
        x = np.array([position[b] for b in mine["block"]], dtype=float)
        measured = mine["influence"].notna().to_numpy()
        top.bar(x[measured] + (i - (len(runs) - 1) / 2) * width, mine["influence"].to_numpy()[measured], width,
                color=colour, hatch=HATCHES[k % len(HATCHES)], edgecolor="white", label=labels[run])
        # Empty drops stay NaN so that the line breaks at a block that cannot be deleted.
        bottom.plot(x, mine["top1_drop"].to_numpy(dtype=float), marker="o", markersize=3.5, color=colour,
                    linestyle=LINESTYLES[k % len(LINESTYLES)], label=labels[run])
    fixed = rows.loc[~rows["deletable"].astype(bool), "block"].unique()
    for b in fixed:
        bottom.axvspan(position[b] - 0.5, position[b] + 0.5, color="0.9", zorder=0)
    stage_of = rows.drop_duplicates("block").set_index("block")["stage"]
    for a, b in zip(blocks, blocks[1:]):
        if stage_of[a] != stage_of[b]:
            for ax in (top, bottom):
                ax.axvline(position[b] - 0.5, color="0.6", linestyle=":", linewidth=0.8)
    top.set_ylabel("influence (1 - cos)")
    top.set_title("block influence on the evaluation data (none where a block changes the shape)")
    bottom.set_ylabel("top-1 drop (%)")
    bottom.set_title("deleting that block alone (shaded: cannot be deleted)")
    bottom.axhline(0, color="0.4", linewidth=0.6)
    bottom.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    bottom.set_xlabel("block")
    figure_legend(fig, [top, bottom])
    return fig
