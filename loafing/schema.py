"""The tidy tables: every table's columns, types and ranges, declared once (the columns that identify a run are
declared in `loafing.run_columns`).

Every writer goes through `write_table` and every reader through `read_table`, so a value keeps its
type on a round trip: `layers` "2" stays the text "2", an absent `space_size` stays missing, `seed` stays an
integer. Text columns never turn empty cells into NaN.
"""
from __future__ import annotations

import codecs
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from loafing import legacy
from loafing.errors import LoafingError
from loafing.io import write_csv
from loafing.method_styles import FOREIGN_METHOD, FOREIGN_STYLE, STYLE_COLUMNS
from loafing.run_columns import (  # noqa: F401  (declared there, read here and by every table's user)
    BASE_RUN_COLUMNS, BOOL, FLOAT, INT, OPTIONAL_INT, RUN_KEY, TEXT, add_run_column, method_run_columns,
    remove_run_column, run_columns, run_identifiers, with_run_identifiers)

PLAN_COLUMNS = {"plan": TEXT, "depths": TEXT, "n_blocks": INT, "is_main": BOOL}
# What the model's spec calls the network a plan runs ("ResNet20"; empty where it has no name), for the figures.
ARCHITECTURE_COLUMN = {"architecture": TEXT}
# The view whose steps a row's plan (or block) numbers: "block", or "unit" (a transformer block's attention and MLP
# units, `--granularity unit`); tables written before the unit view were all "block".
GRANULARITY_COLUMN = {"granularity": TEXT}
OLD_GRANULARITY = "block"  # the view of every table and KL record written before the unit view existed
METRIC_COLUMNS = {"top1": FLOAT, "top5": FLOAT, "loss": FLOAT, "n_examples": INT, "kl": FLOAT}
CALIBRATION_COLUMNS = {"recalibrated": BOOL, "calib_size": INT, "calib_seed": INT, "calib_augmented": BOOL}
# Before 2026-12-03 the calibration images were drawn without the training augmentation.
OLD_CALIB_AUGMENTED = False
# What a value of a column can be, in whichever table it appears (inclusive bounds): a finite number within them, or
# missing. A results file holding anything else was not written by a measurement, and is refused.
PERCENT, PERCENT_CHANGE, NON_NEGATIVE, FINITE = (0.0, 100.0), (-100.0, 100.0), (0.0, math.inf), (-math.inf, math.inf)
RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("top1", "top5", "test_top1_recalibrated", "test_top1_running_bn", "top1_inside", "top1_alone"),
                    PERCENT),
    **dict.fromkeys(("drop", "top1_drop", "gap"), PERCENT_CHANGE),  # a difference of two percentages
    **dict.fromkeys(("loss", "ce", "kl", "test_loss_recalibrated", "test_loss_running_bn", "lr", "seconds",
                     "examples_per_s", "peak_memory_mib", "n", "n_blocks", "calib_size", "epoch", "method_order"),
                    NON_NEGATIVE),
    "cosine": (-1.0, 1.0), "influence": (0.0, 2.0), "n_examples": (1.0, math.inf), "block": (1.0, math.inf),
    "stage": (1.0, math.inf), "width_mult": (0.0, math.inf), "gap_ci_low": FINITE, "gap_ci_high": FINITE,
}
ROUNDING = 1e-6  # a value this close to a bound (relative to the bound) is the bound, rounded (a cosine of 1 + 1e-7)
HEADER_BYTES = 1 << 16  # how much of a file tells whether it is a table of ours


@dataclass(frozen=True)
class Table:
    """One kind of tidy table: its file name and, after the run columns, its own columns and types."""

    name: str
    file: str
    columns: Mapping[str, str]
    key: tuple[str, ...] = ()  # the columns that name a row: a tidy table holds one row per key (empty: no key)
    marks: tuple[str, ...] = ()  # besides `run`, the columns whose presence makes a CSV this kind (see table_kind)

    def dtypes(self) -> dict[str, str]:
        """Every column of the table, run columns first, with its type."""
        return {**run_columns(), **self.columns}


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("measure", "measure.csv", {**GRANULARITY_COLUMN, **PLAN_COLUMNS, **ARCHITECTURE_COLUMN, **METRIC_COLUMNS,
                                     **CALIBRATION_COLUMNS, "space": TEXT}, key=(*RUN_KEY, "granularity", "plan"),
          marks=("plan", "is_main", "top1")),
    Table("destruct", "destruct.csv", {
        "mode": TEXT, "n": INT, "layers": TEXT, **GRANULARITY_COLUMN, **PLAN_COLUMNS, **ARCHITECTURE_COLUMN,
        "top1": FLOAT, "drop": FLOAT, "top5": FLOAT, "loss": FLOAT, "n_examples": INT, "kl": FLOAT,
        **CALIBRATION_COLUMNS, "sampled": BOOL}, marks=("plan", "mode", "n", "layers", "drop")),
    # Per host network and architecture trained alone (Fig. 1's pairs): the loafing gap, paired over test images.
    Table("loafing_gap", "loafing_gap.csv", {
        **GRANULARITY_COLUMN, "depths": TEXT, **ARCHITECTURE_COLUMN, "plan": TEXT, "alone_run": TEXT,
        "top1_inside": FLOAT, "top1_alone": FLOAT, "gap": FLOAT, "gap_ci_low": FLOAT, "gap_ci_high": FLOAT,
        "n_examples": INT, **CALIBRATION_COLUMNS}, marks=("alone_run", "top1_inside", "top1_alone", "gap")),
    # Block influence (loafing/influence.py): 1 - mean cosine(block input, block output), and the delete-one drop.
    Table("influence", "influence.csv", {
        **GRANULARITY_COLUMN, "block": INT, "stage": INT, "deletable": BOOL, "cosine": FLOAT, "influence": FLOAT,
        "top1_drop": FLOAT, "n_examples": INT, **CALIBRATION_COLUMNS}, marks=("block", "influence", "top1_drop")),
    Table("kl_trajectory", "kl_trajectory.csv", {"epoch": INT, **GRANULARITY_COLUMN, **PLAN_COLUMNS, "kl": FLOAT,
                                                 "top1": FLOAT}, marks=("plan", "is_main", "epoch", "kl")),
    Table("train_log", "train_log.csv", {
        "epoch": INT, "lr": FLOAT, "loss": FLOAT, "ce": FLOAT, "kl": FLOAT,
        "test_top1_recalibrated": FLOAT, "test_loss_recalibrated": FLOAT,
        "test_top1_running_bn": FLOAT, "test_loss_running_bn": FLOAT,
        "seconds": FLOAT, "examples_per_s": FLOAT, "peak_memory_mib": FLOAT, "memory_kind": TEXT},
          marks=("epoch", "loss", "test_top1_recalibrated")),
)}


def conform(df: pd.DataFrame, table: str, required: Sequence[str] | None = None) -> pd.DataFrame:
    """`df` with the table's columns in order, each cast to its type; other columns are dropped.

    Every column of the table is required unless `required` names the ones that are (a reader that
    needs only some); a missing required column is a one-line error naming it.
    """
    spec = TABLES[table]
    dtypes = spec.dtypes()
    df = migrated(df, table)
    missing = [c for c in (dtypes if required is None else required) if c not in df.columns]
    if missing:
        raise LoafingError(f"{spec.file}: missing column '{missing[0]}'")
    present = [c for c in dtypes if c in df.columns]
    out = df[present].copy()
    for column in present:
        kind, values = dtypes[column], out[column]
        if kind == TEXT:
            out[column] = values.astype(object).where(values.notna(), "").astype(str)
        else:
            try:
                out[column] = values.astype(kind)
            except (TypeError, ValueError):
                raise LoafingError(f"{spec.file}: column '{column}' holds a value that is not {_kind_name(kind)}") \
                    from None
    return out


def migrated(df: pd.DataFrame, table: str | None = None) -> pd.DataFrame:
    """`df` with the run columns of a table written by an older version: a table without the method_* columns gets
    its methods' styles of then (`loafing.legacy`) and the columns only ST read emptied in other rows (CT rows once
    carried lam=1.0); a registered method's column a table lacks gets the default in that method's rows; the plans
    of a `table` that names them but lacks `architecture` get an empty one, and lacking `granularity`, "block"; a
    table without `variant`, an empty one;
    one with calibration columns but no `calib_augmented`, False (its calibration images were not augmented)."""
    if "method" not in df.columns:
        return df
    df = df.copy()
    methods = df["method"].astype(str)
    if "method_label" not in df.columns:
        styles = {m: (*style, i) for i, (m, style) in enumerate(legacy.STYLES.items())}
        styles[FOREIGN_METHOD] = (*FOREIGN_STYLE, None)
        rows = [styles.get(m, ("", "", "", None)) for m in methods]
        for i, column in enumerate(STYLE_COLUMNS):
            df[column] = pd.array([r[i] for r in rows], dtype=OPTIONAL_INT) if column == "method_order" \
                else [r[i] for r in rows]
        for name, (owner, default) in legacy.METHOD_COLUMNS.items():
            _fill(df, name, methods == owner, default)
    for name, column in method_run_columns().items():
        if name not in df.columns:
            _fill(df, name, methods.isin(column.methods), column.default)
    if table is not None and "architecture" in TABLES[table].columns and "architecture" not in df.columns:
        df["architecture"] = ""  # written before plans had a name
    if table is not None and "granularity" in TABLES[table].columns and "granularity" not in df.columns:
        df["granularity"] = OLD_GRANULARITY
    if "recalibrated" in df.columns and "calib_augmented" not in df.columns:
        df["calib_augmented"] = OLD_CALIB_AUGMENTED
    if "variant" not in df.columns:
        df["variant"] = ""  # written before variants were told apart (committed tables: rewritten with theirs)
    return df


def _fill(df: pd.DataFrame, name: str, owned: pd.Series, default: Any) -> None:
    """Empty column `name` outside the `owned` rows; a column the table lacks gets `default` in those rows."""
    if name not in df.columns:
        df[name] = [default if mine else ("" if isinstance(default, str) else None) for mine in owned]
    elif (~owned).any():
        text = df[name].dtype == object and df[name].map(lambda v: isinstance(v, str)).any()  # cells read as text
        df.loc[~owned, name] = "" if text else None


def write_table(df: pd.DataFrame, path: str | Path, table: str) -> None:
    """Write a tidy table atomically, with exactly its schema's columns and types."""
    write_csv(conform(df, table), path)


class NotATable(LoafingError):
    """A file that is no tidy table of ours (binary, or a header that names none of its table's columns): a reader
    that looks through a results folder skips it; one that was given that file refuses it."""


def read_table(path: str | Path, table: str, required: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a tidy table with its schema's types (see `conform` for `required`); one-line errors for files that are
    no table of ours (NotATable), unreadable ones, missing columns, and values of the wrong type or out of RANGES,
    naming the row."""
    dtypes = TABLES[table].dtypes()
    header = header_columns(path)  # an empty file is an empty table
    if header and not set(header) & set(dtypes):
        raise NotATable(f"{path}: not a results table: its first line names none of the columns of "
                        f"{TABLES[table].file}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame({c: pd.Series(dtype=str) for c in dtypes})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise LoafingError(f"{path}: not a readable CSV ({type(err).__name__})") from None
    for column, kind in dtypes.items():
        if column in raw.columns and kind != TEXT:
            cells = raw[column]
            raw[column] = _parse(cells, kind, path, column)
            _check_range(raw[column], cells, path, column)
    raw = migrated(raw)  # before the extra columns are taken: an old file's CT rows lose their lam here too
    conformed = conform(raw, table, required)
    # Columns this process has no schema for (a method that is not registered here) are kept, typed by their cells.
    extra = [c for c in raw.columns if c not in conformed.columns and c not in dtypes]
    for column in extra:
        kind = _inferred_kind(raw[column])
        conformed[column] = raw[column] if kind == TEXT else _parse(raw[column], kind, path, column)
    return conformed


def header_columns(path: str | Path) -> list[str]:
    """The column names on the first line of a CSV file (none for an empty file); NotATable for a binary one."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if not head:
        return []
    line = head.split(b"\n", 1)[0]
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(line, final=len(line) < len(head))
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise NotATable(f"{path}: not a results table: binary, not a readable CSV")
    return [name.strip().lstrip("\ufeff") for name in next(csv.reader([text]), [])]


def table_kind(columns: Sequence[str]) -> str | None:
    """Which table a CSV with these columns is: of the tables whose `run` and marks it holds all, the one with the
    most marks (a destruct table holds a measure table's marks too); None where none is, or two tie."""
    held = set(columns)
    fits = sorted((len(t.marks), name) for name, t in TABLES.items() if {"run", *t.marks} <= held)
    return fits[-1][1] if fits and (len(fits) == 1 or fits[-1][0] > fits[-2][0]) else None


def _check_range(values: pd.Series, cells: pd.Series, path: str | Path, column: str) -> None:
    """A one-line error naming the first row whose value of `column` lies outside its RANGES (or is not finite)."""
    if column not in RANGES:
        return
    low, high = RANGES[column]
    numbers = values.astype(float).to_numpy()
    present = ~np.isnan(numbers)
    inside = np.isfinite(numbers) & (numbers >= low - ROUNDING * max(1.0, abs(low)))
    inside &= numbers <= high + ROUNDING * max(1.0, abs(high))
    wrong = np.flatnonzero(present & ~inside)
    if len(wrong):
        within = {FINITE: "", NON_NEGATIVE: " ≥ 0"}.get((low, high), f" in [{low:g}, {high:g}]")
        raise LoafingError(f"{path}: column '{column}' holds {cells.iloc[wrong[0]].strip()} in "
                           f"{_row_text(wrong[0])}, where a finite number{within} belongs")


def _row_text(index: int) -> str:
    """Where the `index`-th data row of a CSV is, for a person opening the file (the header is line 1)."""
    return f"data row {index + 1} (line {index + 2})"


def _inferred_kind(values: pd.Series) -> str:
    """The narrowest column type that every non-empty text cell of `values` reads as."""
    blank = is_blank(values)
    cells = values[~blank].astype(str).str.strip()
    if cells.empty:
        return TEXT
    if cells.str.lower().isin(["true", "false"]).all() and not blank.any():
        return BOOL
    numbers = pd.to_numeric(cells, errors="coerce")
    if numbers.isna().any():
        return TEXT
    return OPTIONAL_INT if cells.str.fullmatch(r"[+-]?\d+").all() else FLOAT


def is_blank(values: pd.Series) -> pd.Series:
    """True for empty CSV cells (missing, or only spaces)."""
    return values.isna() | (values.astype("string").str.strip() == "").fillna(True)


def _parse(values: pd.Series, kind: str, path: str | Path, column: str) -> pd.Series:
    """Text cells of one CSV column as the column's type (empty cells are missing values)."""
    blank = is_blank(values)
    if kind == BOOL:
        lowered = values.str.strip().str.lower()
        _refuse_cells(values, ~lowered.isin(["true", "false"]), kind, path, column)
        return lowered == "true"
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    _refuse_cells(values, numbers.isna() & ~blank, kind, path, column)
    if kind in (INT, OPTIONAL_INT):
        wrong = numbers.notna() & ((numbers % 1 != 0) | (numbers.abs() >= 2**63))
        _refuse_cells(values, wrong | (blank & (kind == INT)), kind, path, column)
        return numbers.astype(OPTIONAL_INT)
    return numbers.astype(FLOAT)


def _refuse_cells(values: pd.Series, wrong: pd.Series, kind: str, path: str | Path, column: str) -> None:
    """A one-line error naming the first of the `wrong` cells, if any."""
    rows = np.flatnonzero(wrong.to_numpy(dtype=bool))
    if len(rows):
        cell = str(values.iloc[rows[0]]).strip()[:40]
        raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)} ({cell!r} in "
                           f"{_row_text(rows[0])})")


def _kind_name(kind: str) -> str:
    return {FLOAT: "a number", INT: "an integer", OPTIONAL_INT: "an integer", BOOL: "True or False"}.get(kind, kind)
