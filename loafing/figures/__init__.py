"""The paper's figures and tables from tidy results CSVs, and their registry.

`select` shapes the data, `plots` and `tables` draw (pure `plot_*(df) -> Figure` and
`table_*(df) -> DataFrame`), and `FIGURES` below says, per figure, which table it reads and which of
its columns it needs. `make_figures` draws any of them from a results folder; it never trains.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from loafing.errors import LoafingError, LoafingWarning
from loafing.figures.ablation import table_ablation
from loafing.figures.canvas import DPI, fit_titles, lay_out, texts_outside
from loafing.figures.dynamics import plot_kl, plot_trajectories
from loafing.figures.influence import plot_influence
from loafing.figures.plots import (plot_inside_vs_alone, plot_lambda, plot_methods_subnetworks, plot_sampling_rules,
                                   plot_space_size, plot_subnetworks)
from loafing.figures.robustness import destruct_beside, plot_destruct
from loafing.figures.select import NotEnoughData, require_columns
from loafing.figures.sources import find_tables, read_kind, warn_ignored
from loafing.figures.tables import (markdown_table, render_table, table_cost, table_inside_grid,
                                    table_loafing_gap, table_main_and_subnetworks, table_methods)
from loafing.io import atomic_path
from loafing.schema import GRANULARITY_COLUMN, TABLES

RUN = ("run", "method", "seed", "trained_plan")  # what every figure needs to tell runs apart
MEASURED = (*RUN, "plan", "is_main", "top1")
# Fig. 1 and the inside grid match a smaller network to the same architecture trained alone, across host models.
INSIDE = ("run", "model", "method", "trained_plan", "plan", "depths", "n_blocks", "is_main", "top1")
(VIEW,) = GRANULARITY_COLUMN  # whether a row's plan counts blocks or units (`--granularity unit`)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One of the paper's figures or tables: the table it reads, the columns it needs, how it is drawn."""

    name: str
    title: str
    table: str  # a key of loafing.schema.TABLES
    columns: tuple[str, ...]
    function: Callable[..., Figure | pd.DataFrame]  # (rows of `table`, rows of each of `also`) -> result
    kind: str  # "figure" | "table"
    group_by: tuple[str, ...] = ("model", "dataset")
    also: tuple[str, ...] = ()  # further tables it reads (each filtered to the same group; may be absent)


@dataclasses.dataclass
class FigureOutcome:
    """What make_figures did for one figure (and one model/dataset group when the results mix several)."""

    name: str
    paths: list[Path]
    skipped: str | None = None
    group: str = ""
    sources: tuple[str, ...] = ()  # the CSVs its rows came from (file names in the results folder)
    runs: tuple[str, ...] = ()  # the runs in those rows
    clipped: tuple[str, ...] = ()  # texts that run off its canvas (none, unless a layout is wrong)


FIGURES: dict[str, FigureSpec] = {spec.name: spec for spec in (
    # Fig. 1 compares different host models, so only the data set splits it.
    FigureSpec("fig1", "Fig. 1: sub-networks inside bigger networks vs trained alone", "measure", INSIDE,
               plot_inside_vs_alone, "figure", group_by=("dataset",)),
    FigureSpec("inside", "Tables r5, r6: sub-networks (rows) inside main networks (columns); each network on its own "
               "where row = column", "measure", INSIDE, table_inside_grid, "table", group_by=("dataset",)),
    FigureSpec("fig4", "Fig. 4: sub-networks inside the network", "measure", (*MEASURED, "n_blocks"),
               plot_subnetworks, "figure"),
    FigureSpec("fig5", "Fig. 5: sub-network top-1 vs sampling-space size", "measure", MEASURED, plot_space_size,
               "figure"),
    FigureSpec("fig6", "Fig. 6: top-1 drop when deleting or permuting layers", "destruct",
               (*RUN, "mode", "n", "layers", "drop"), plot_destruct, "figure"),
    FigureSpec("fig7", "Fig. 7: KL(main || sub-network) during training", "kl_trajectory",
               (*RUN, "epoch", "is_main", "kl"), plot_kl, "figure"),
    FigureSpec("figr2", "Fig. r2: training loss and test top-1", "train_log",
               (*RUN, "epoch", "loss", "test_top1_recalibrated"), plot_trajectories, "figure"),
    FigureSpec("figr3", "Fig. r3: effect of λ on stimulative training", "measure", MEASURED, plot_lambda, "figure"),
    FigureSpec("fig3", "Fig. 3: ST's sampling rules, main network and sub-networks", "measure", MEASURED,
               plot_sampling_rules, "figure"),
    FigureSpec("table1", "Table 1: main network and sub-networks top-1 (%)", "measure", MEASURED,
               table_main_and_subnetworks, "table"),
    FigureSpec("tabler3", "Table r3: training methods compared", "measure", MEASURED, table_methods, "table",
               also=("train_log",)),
    FigureSpec("figr4", "Fig. r4: top-1 drop, CT vs ST vs self-distillation", "destruct",
               (*RUN, "mode", "n", "layers", "drop"), destruct_beside("self-distillation"), "figure"),
    FigureSpec("figr5", "Fig. r5: top-1 drop, CT vs ST vs stochastic depth", "destruct",
               (*RUN, "mode", "n", "layers", "drop"), destruct_beside("stochastic-depth"), "figure"),
    FigureSpec("figr6", "Fig. r6: top-1 drop, CT vs ST vs layer supervision", "destruct",
               (*RUN, "mode", "n", "layers", "drop"), destruct_beside("layer-supervision"), "figure"),
    FigureSpec("figr7", "Fig. r7: top-1 drop, CT vs ST vs stage supervision", "destruct",
               (*RUN, "mode", "n", "layers", "drop"), destruct_beside("stage-supervision"), "figure"),
    FigureSpec("figr8", "Fig. r8: sub-networks under every training method", "measure", (*MEASURED, "n_blocks"),
               plot_methods_subnetworks, "figure"),
    FigureSpec("tabler4", "Table r4: training time and memory", "train_log",
               (*RUN, "seconds", "examples_per_s", "peak_memory_mib", "memory_kind"), table_cost, "table"),
    FigureSpec("influence", "Block influence (1 - cos) and the top-1 drop of deleting each block",
               "influence", (*RUN, "block", "stage", "deletable", "influence", "top1_drop"), plot_influence, "figure"),
    FigureSpec("ablation", "Ablation: each arm (runs over seeds) against ST", "measure", (*MEASURED, "loss"),
               table_ablation, "table", also=("train_log",)),
    FigureSpec("gap", "The loafing gap: each architecture inside its host vs trained alone, 95% CI over test images",
               "loafing_gap", ("run", "method", "depths", "alone_run", "top1_inside", "top1_alone", "gap",
                               "gap_ci_low", "gap_ci_high", "n_examples"), table_loafing_gap, "table",
               group_by=("dataset",)),
)}


def split_groups(df: pd.DataFrame, group_by: Sequence[str]) -> list[tuple[str, str, tuple, pd.DataFrame]]:
    """(file-name suffix, title context, group keys, rows) per group; a single group gets no suffix."""
    groups = list(df.groupby(list(group_by), dropna=False, sort=True))
    out = []
    for keys, rows in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        names = [str(k) for k in keys]
        suffix = "" if len(groups) == 1 else "-" + "-".join(safe_name(name) for name in names)
        out.append((suffix, ", ".join(names), keys, rows))
    return out


def safe_name(text: str) -> str:
    """`text` as part of a file name: anything but letters, digits, '.', '_', '+', '=' and '-' becomes '_', so a value
    read from a CSV (a data set called 'x/../y') can never name a file outside the output folder."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text) or "_"


def _same_group(df: pd.DataFrame, group_by: Sequence[str], keys: tuple) -> pd.DataFrame:
    """Rows of `df` in the group with these keys (all of them where `df` lacks a group column)."""
    mask = pd.Series(True, index=df.index)
    for column, key in zip(group_by, keys):
        if column in df.columns:
            mask &= df[column] == key
    return df[mask]


def _save_figure(fig: Figure, path: Path, png: bool = True) -> tuple[str, ...]:
    """Draw a figure as its PNG (written atomically unless not `png`), free it, and return the texts that run off
    its canvas."""
    try:
        fit_titles(fig)
        if png:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=DPI)
        else:
            lay_out(fig)
        return tuple(texts_outside(fig))
    finally:
        plt.close(fig)


def _write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _read_tables(results_dir: Path, names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Every table the named figures read, from the CSVs that hold it whatever their names, as the figures take it;
    the names of the files each was read from (none: the folder holds no such table); and what to add to the
    reason of a figure that has no rows of it. A CSV that is no results table is left out with a warning."""
    found = find_tables(results_dir)
    warn_ignored(found)
    tables, files, notes = {}, {}, {}
    for table in dict.fromkeys(t for name in names for t in (FIGURES[name].table, *FIGURES[name].also)):
        paths = found.files.get(table, [])
        files[table] = [path.name for path in paths]
        tables[table] = (read_kind(paths, table) if paths
                         else pd.DataFrame(columns=list(TABLES[table].dtypes())))
        if paths:
            notes[table] = f" ({', '.join(files[table])}: no rows)"
        else:  # a file named as this table that is none: the reason to give
            named = [path.name for path, _ in found.ignored if path.name == TABLES[table].file]
            notes[table] = f" ({named[0]} is not a results table)" if named else ""
    return tables, files, notes


def group_columns(spec: FigureSpec, data: pd.DataFrame) -> tuple[str, ...]:
    """What splits `data` into one figure each: the spec's groups, and the view where the rows hold both (a plan's
    steps count blocks in one and units in the other, so their rows never make one number)."""
    mixed = VIEW in data.columns and data[VIEW].nunique(dropna=False) > 1
    return (*spec.group_by, VIEW) if mixed else spec.group_by


def make_figures(results_dir: str | Path, out_dir: str | Path, names: Sequence[str] | None = None,
                 png: bool = True) -> list[FigureOutcome]:
    """Draw the named (default: all) figures and tables from the CSVs in `results_dir` into `out_dir`, with the
    study's page; without `png`, draw every figure but write no PNG (its outcome still names it)."""
    names = list(FIGURES) if names is None else list(names)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise LoafingError(f"unknown figure '{unknown[0]}'; valid names: {', '.join(FIGURES)}")
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    tables, files, notes = _read_tables(results_dir, names)  # every file is checked before anything is written
    for name in names:
        spec = FIGURES[name]
        if not tables[spec.table].empty:
            require_columns(tables[spec.table], (*spec.group_by, *spec.columns), ", ".join(files[spec.table]))
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for name in names:
        spec = FIGURES[name]
        data = tables[spec.table]
        if data.empty:
            outcomes.append(FigureOutcome(name, [], f"needs {spec.table} rows{notes[spec.table]}"))
            continue
        group_by = group_columns(spec, data)
        for suffix, context, keys, rows in split_groups(data, group_by):
            try:
                result = spec.function(rows, *(_same_group(tables[t], group_by, keys) for t in spec.also))
            except NotEnoughData as reason:
                outcomes.append(FigureOutcome(name, [], str(reason), suffix.lstrip("-")))
                continue
            if spec.kind == "table" and result.empty:
                outcomes.append(FigureOutcome(name, [], "no rows to show", suffix.lstrip("-")))
                continue
            title = f"{spec.title}\n{context}"
            drawn_from = {"sources": tuple(f for t in (spec.table, *spec.also) if not tables[t].empty
                                           for f in files[t]),
                          "runs": tuple(sorted(rows["run"].astype(str).unique()))}
            png_path = out_dir / f"{name}{suffix}.png"
            if spec.kind == "table":
                markdown = out_dir / f"{name}{suffix}.md"
                _write_text(markdown_table(result, f"{spec.title} ({context})"), markdown)
                fig = render_table(result, title)
                paths = [markdown, png_path]
            else:
                fig = result
                fig.suptitle(title, fontsize="medium")
                paths = [png_path]
            clipped = _save_figure(fig, png_path, png)
            if clipped:
                warnings.warn(LoafingWarning(f"{png_path.name}: text runs off the figure: {'; '.join(clipped)}"))
            outcomes.append(FigureOutcome(name, paths, None, suffix.lstrip("-"), **drawn_from, clipped=clipped))
    from loafing.figures.report import write_study_page  # it reads this module's registry
    write_study_page(outcomes, results_dir, out_dir)
    return outcomes


def summary_line(outcomes: Sequence[FigureOutcome]) -> str:
    """What make_figures did, in one line: 'drew 9 figures, 3 tables; skipped 2: fig6, fig7 need destruct rows'
    (a figure skipped in some model/data-set groups only is named with the group)."""
    drawn = [o for o in outcomes if not o.skipped]
    kinds = [FIGURES[o.name].kind if o.name in FIGURES else "figure" for o in drawn]
    counts = [f"{kinds.count(kind)} {kind}{'s' * (kinds.count(kind) != 1)}" for kind in ("figure", "table")]
    line = f"drew {', '.join(counts)}"
    reasons: dict[str, dict[str, list[str]]] = {}  # reason -> figure -> the groups it was skipped in for it
    for outcome in (o for o in outcomes if o.skipped):
        whole = all(o.skipped == outcome.skipped for o in outcomes if o.name == outcome.name)
        groups = reasons.setdefault(str(outcome.skipped), {}).setdefault(outcome.name, [])
        if outcome.group and not whole:
            groups.append(outcome.group)
    if not reasons:
        return line
    parts = []
    for reason, figures in reasons.items():
        labels = [f"{name} ({', '.join(groups)})" if groups else name for name, groups in figures.items()]
        if reason.startswith("needs "):
            parts.append(f"{', '.join(labels)} {'need' if len(labels) > 1 else 'needs'} {reason[len('needs '):]}")
        else:
            parts.append(f"{', '.join(labels)}: {reason}")
    return f"{line}; skipped {sum(map(len, reasons.values()))}: {'; '.join(parts)}"  # figures, not groups


__all__ = ["FIGURES", "FigureOutcome", "FigureSpec", "NotEnoughData", "destruct_beside", "make_figures",
           "plot_destruct", "plot_influence", "plot_inside_vs_alone", "plot_kl", "plot_lambda",
           "plot_methods_subnetworks", "plot_sampling_rules", "plot_space_size", "plot_subnetworks",
           "plot_trajectories", "summary_line", "table_cost", "table_inside_grid", "table_main_and_subnetworks",
           "table_methods"]
