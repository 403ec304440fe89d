"""The tidy tables: which columns identify a run, and every table's columns and types, declared once.

Every writer goes through `write_table` and every reader through `read_table`, so a value keeps its
type on a round trip: `layers` "2" stays the text "2", an absent `space_size` stays missing, `seed` stays an
integer. Text columns never turn empty cells into NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from loafing import legacy
from loafing.errors import LoafingError
from loafing.io import write_csv
from loafing.method_styles import FOREIGN_METHOD, FOREIGN_STYLE, STYLE_COLUMNS, method_style, variant_text

TEXT, FLOAT, INT, OPTIONAL_INT, BOOL = "str", "float64", "int64", "Int64", "bool"

# The columns that identify a run in every table; a training method may add its own (see run_columns). The
# method_* columns are how figures show the run's method (its label, colour, role and registry position), written
# into every row so that a reader needs neither the method registry nor torch.
BASE_RUN_COLUMNS: dict[str, str] = {
    "run": TEXT, "model": TEXT, "width_mult": FLOAT, "method": TEXT, "method_label": TEXT, "method_colour": TEXT,
    "method_role": TEXT, "method_order": OPTIONAL_INT, "seed": OPTIONAL_INT, "dataset": TEXT, "trained_plan": TEXT,
    # The run's settings of its method's variant options that differ from their defaults ("subnets=4,
    # kl_logits=normalized"; empty at the defaults): runs of one method in other variants are other schemes.
    "variant": TEXT,
}
# What tells runs apart in a table: a run's name alone does not (two studies of other models may both have a "ct").
RUN_KEY = ("run", "model", "width_mult", "method", "seed", "dataset", "trained_plan")


@dataclass(frozen=True)
class MethodColumn:
    """A run column that training methods add: its type, the methods whose rows fill it, and the value of their rows
    in a table written before the column existed (the option's default)."""

    kind: str
    methods: tuple[str, ...]
    default: Any = None


_method_run_columns: dict[str, MethodColumn] = {}

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


@dataclass(frozen=True)
class Table:
    """One kind of tidy table: its file name and, after the run columns, its own columns and types."""

    name: str
    file: str
    columns: Mapping[str, str]
    key: tuple[str, ...] = ()  # the columns that name a row: a tidy table holds one row per key (empty: no key)

    def dtypes(self) -> dict[str, str]:
        """Every column of the table, run columns first, with its type."""
        return {**run_columns(), **self.columns}


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("measure", "measure.csv", {**GRANULARITY_COLUMN, **PLAN_COLUMNS, **ARCHITECTURE_COLUMN, **METRIC_COLUMNS,
                                     **CALIBRATION_COLUMNS, "space": TEXT}, key=(*RUN_KEY, "granularity", "plan")),
    Table("destruct", "destruct.csv", {
        "mode": TEXT, "n": INT, "layers": TEXT, **GRANULARITY_COLUMN, **PLAN_COLUMNS, **ARCHITECTURE_COLUMN,
        "top1": FLOAT, "drop": FLOAT, "top5": FLOAT, "loss": FLOAT, "n_examples": INT, "kl": FLOAT,
        **CALIBRATION_COLUMNS, "sampled": BOOL}),
    # Per host network and architecture trained alone (Fig. 1's pairs): the loafing gap, paired over test images.
    Table("loafing_gap", "loafing_gap.csv", {
        **GRANULARITY_COLUMN, "depths": TEXT, **ARCHITECTURE_COLUMN, "plan": TEXT, "alone_run": TEXT,
        "top1_inside": FLOAT, "top1_alone": FLOAT, "gap": FLOAT, "gap_ci_low": FLOAT, "gap_ci_high": FLOAT,
        "n_examples": INT, **CALIBRATION_COLUMNS}),
    # Block influence (loafing/influence.py): 1 - mean cosine(block input, block output), and the delete-one drop.
    Table("influence", "influence.csv", {
        **GRANULARITY_COLUMN, "block": INT, "stage": INT, "deletable": BOOL, "cosine": FLOAT, "influence": FLOAT,
        "top1_drop": FLOAT, "n_examples": INT, **CALIBRATION_COLUMNS}),
    Table("kl_trajectory", "kl_trajectory.csv", {"epoch": INT, **GRANULARITY_COLUMN, **PLAN_COLUMNS, "kl": FLOAT,
                                                 "top1": FLOAT}),
    Table("train_log", "train_log.csv", {
        "epoch": INT, "lr": FLOAT, "loss": FLOAT, "ce": FLOAT, "kl": FLOAT,
        "test_top1_recalibrated": FLOAT, "test_loss_recalibrated": FLOAT,
        "test_top1_running_bn": FLOAT, "test_loss_running_bn": FLOAT,
        "seconds": FLOAT, "examples_per_s": FLOAT, "peak_memory_mib": FLOAT, "memory_kind": TEXT}),
)}


def run_columns() -> dict[str, str]:
    """The run-identifying columns and their types: the base ones, then those the registered training methods add."""
    return {**BASE_RUN_COLUMNS, **{name: column.kind for name, column in _method_run_columns.items()}}


def add_run_column(name: str, kind: str, method: str, default: Any = None) -> None:
    """Declare a run column that a training method adds (several methods may share one of the same type); runs of
    other methods leave it empty, so its type must allow missing values (str, float64 or Int64)."""
    if name in BASE_RUN_COLUMNS:
        raise ValueError(f"{name!r} is already a run column")
    if kind not in (TEXT, FLOAT, OPTIONAL_INT):
        raise ValueError(f"run column {name!r}: type {kind!r} cannot be empty; use {TEXT}, {FLOAT} or {OPTIONAL_INT}")
    known = _method_run_columns.get(name)
    if known is not None and (known.kind, known.default) != (kind, default):
        raise ValueError(f"run column {name!r} is already declared as {known.kind} (default {known.default!r}) by "
                         f"{', '.join(known.methods)}")
    owners = (*known.methods, method) if known is not None else (method,)
    _method_run_columns[name] = MethodColumn(kind, owners, default)


def remove_run_column(name: str, method: str | None = None) -> None:
    """Forget a method's run column (all of it, or only `method`'s share of it)."""
    known = _method_run_columns.pop(name, None)
    owners = tuple(m for m in known.methods if m != method) if known is not None and method is not None else ()
    if owners:
        _method_run_columns[name] = MethodColumn(known.kind, owners, known.default)


def run_identifiers(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The run columns' values for a run configuration (a TrainConfig as a dict, or a foreign checkpoint's)."""
    method = config.get("method")
    ids = {"run": config.get("run"), "model": config.get("model"), "width_mult": config.get("width_mult"),
           "method": method, **method_style(method), "seed": config.get("seed"), "dataset": dataset,
           "trained_plan": config.get("plan") or ""}
    options = config.get("method_options") or {}
    # A checkpoint written before methods kept their options apart has them at the top level.
    ids["variant"] = variant_text(method, {**{k: v for k, v in config.items() if k != "method_options"}, **options})
    for name, column in _method_run_columns.items():
        ids[name] = options.get(name, config.get(name, column.default)) if method in column.methods else None
    return ids


def with_run_identifiers(df: pd.DataFrame, ids: Mapping[str, Any]) -> pd.DataFrame:
    """`df` with the run columns in front, each holding the run's value."""
    return pd.concat([pd.DataFrame({k: [v] * len(df) for k, v in ids.items()}, index=df.index),
                      df.drop(columns=[c for c in ids if c in df.columns])], axis=1)


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
    for name, column in _method_run_columns.items():
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


def read_table(path: str | Path, table: str, required: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a tidy table with its schema's types (see `conform` for `required`); one-line errors for unreadable
    files, missing columns and values of the wrong type."""
    dtypes = TABLES[table].dtypes()
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame({c: pd.Series(dtype=str) for c in dtypes})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise LoafingError(f"{path}: not a readable CSV ({type(err).__name__})") from None
    for column, kind in dtypes.items():
        if column in raw.columns and kind != TEXT:
            raw[column] = _parse(raw[column], kind, path, column)
    raw = migrated(raw)  # before the extra columns are taken: an old file's CT rows lose their lam here too
    conformed = conform(raw, table, required)
    # Columns this process has no schema for (a method that is not registered here) are kept, typed by their cells.
    extra = [c for c in raw.columns if c not in conformed.columns and c not in dtypes]
    for column in extra:
        kind = _inferred_kind(raw[column])
        conformed[column] = raw[column] if kind == TEXT else _parse(raw[column], kind, path, column)
    return conformed


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
        if not lowered.isin(["true", "false"]).all():
            raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
        return lowered == "true"
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    if (numbers.isna() & ~blank).any():
        raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
    if kind in (INT, OPTIONAL_INT):
        present = numbers.dropna()
        if (present % 1 != 0).any() or (present.abs() >= 2**63).any() or (kind == INT and blank.any()):
            raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
        return numbers.astype(OPTIONAL_INT)
    return numbers.astype(FLOAT)


def _kind_name(kind: str) -> str:
    return {FLOAT: "a number", INT: "an integer", OPTIONAL_INT: "an integer", BOOL: "True or False"}.get(kind, kind)
