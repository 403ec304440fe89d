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

from loafing.errors import LoafingError
from loafing.io import write_csv

TEXT, FLOAT, INT, OPTIONAL_INT, BOOL = "str", "float64", "int64", "Int64", "bool"

# The columns that identify a run in every table; a training method may add its own (see run_columns).
BASE_RUN_COLUMNS: dict[str, str] = {
    "run": TEXT, "model": TEXT, "width_mult": FLOAT, "method": TEXT, "lam": FLOAT, "seed": OPTIONAL_INT,
    "dataset": TEXT, "trained_plan": TEXT, "space_size": OPTIONAL_INT,
}
# The `method` of a foreign checkpoint's rows (akamaster, torchvision): trained elsewhere, not by a registered method.
FOREIGN_METHOD = "external"
_method_run_columns: dict[str, tuple[str, str]] = {}  # name -> (type, the method that sets it)

PLAN_COLUMNS = {"plan": TEXT, "depths": TEXT, "n_blocks": INT, "is_main": BOOL}
METRIC_COLUMNS = {"top1": FLOAT, "top5": FLOAT, "loss": FLOAT, "n_examples": INT, "kl": FLOAT}
CALIBRATION_COLUMNS = {"recalibrated": BOOL, "calib_size": INT, "calib_seed": INT}


@dataclass(frozen=True)
class Table:
    """One kind of tidy table: its file name and, after the run columns, its own columns and types."""

    name: str
    file: str
    columns: Mapping[str, str]

    def dtypes(self) -> dict[str, str]:
        """Every column of the table, run columns first, with its type."""
        return {**run_columns(), **self.columns}


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("measure", "measure.csv", {**PLAN_COLUMNS, **METRIC_COLUMNS, **CALIBRATION_COLUMNS, "space": TEXT}),
    Table("destruct", "destruct.csv", {
        "mode": TEXT, "n": INT, "layers": TEXT, **PLAN_COLUMNS, "top1": FLOAT, "drop": FLOAT, "top5": FLOAT,
        "loss": FLOAT, "n_examples": INT, "kl": FLOAT, **CALIBRATION_COLUMNS, "sampled": BOOL}),
    Table("kl_trajectory", "kl_trajectory.csv", {"epoch": INT, **PLAN_COLUMNS, "kl": FLOAT, "top1": FLOAT}),
    Table("train_log", "train_log.csv", {
        "epoch": INT, "lr": FLOAT, "loss": FLOAT, "ce": FLOAT, "kl": FLOAT,
        "test_top1_recalibrated": FLOAT, "test_loss_recalibrated": FLOAT,
        "test_top1_running_bn": FLOAT, "test_loss_running_bn": FLOAT,
        "seconds": FLOAT, "examples_per_s": FLOAT, "peak_memory_mib": FLOAT, "memory_kind": TEXT}),
)}


def run_columns() -> dict[str, str]:
    """The run-identifying columns and their types: the base ones, then those the training methods add."""
    import loafing.methods  # noqa: F401  (the methods declare their columns when registered)

    return {**BASE_RUN_COLUMNS, **{name: kind for name, (kind, _) in _method_run_columns.items()}}


def add_run_column(name: str, kind: str, method: str) -> None:
    """Declare a run column that a training method adds; runs of other methods leave it empty, so its type
    must allow missing values (str, float64 or Int64)."""
    if name in BASE_RUN_COLUMNS or name in _method_run_columns:
        raise ValueError(f"{name!r} is already a run column")
    if kind not in (TEXT, FLOAT, OPTIONAL_INT):
        raise ValueError(f"run column {name!r}: type {kind!r} cannot be empty; use {TEXT}, {FLOAT} or {OPTIONAL_INT}")
    _method_run_columns[name] = (kind, method)


def remove_run_column(name: str) -> None:
    """Forget a method's run column (for methods registered only for a while, e.g. in tests)."""
    _method_run_columns.pop(name, None)


def run_identifiers(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The run columns' values for a run configuration (a TrainConfig as a dict, or a foreign checkpoint's)."""
    ids = {name: config.get(name) for name in BASE_RUN_COLUMNS}
    ids["dataset"] = dataset
    ids["trained_plan"] = config.get("plan") or ""
    for name, (_, method) in run_column_owners().items():
        ids[name] = config.get(name, _default(name)) if config.get("method") == method else None
    return ids


def run_column_owners() -> dict[str, tuple[str, str]]:
    """The columns the training methods add: name -> (type, the method that sets it)."""
    import loafing.methods  # noqa: F401

    return dict(_method_run_columns)


def _default(name: str) -> Any:
    """A method column's value for a run saved before the column existed: the setting's default."""
    from loafing.config import TrainConfig

    return getattr(TrainConfig(), name)


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
    df = _with_method_columns(df)
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


def _with_method_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table written before a method added its column gets it: the default for that method's runs, else empty."""
    absent = {n: o for n, o in run_column_owners().items() if n not in df.columns}
    if not absent or "method" not in df.columns:
        return df
    df = df.copy()
    for name, (_, method) in absent.items():
        df[name] = [_default(name) if m == method else None for m in df["method"]]
    return df


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
    return conform(raw, table, required)


def _parse(values: pd.Series, kind: str, path: str | Path, column: str) -> pd.Series:
    """Text cells of one CSV column as the column's type (empty cells are missing values)."""
    blank = values.str.strip() == ""
    if kind == BOOL:
        lowered = values.str.strip().str.lower()
        if not lowered.isin(["true", "false"]).all():
            raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
        return lowered == "true"
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    if (numbers.isna() & ~blank).any():
        raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
    if kind in (INT, OPTIONAL_INT):
        if (numbers.dropna() % 1 != 0).any() or (kind == INT and blank.any()):
            raise LoafingError(f"{path}: column '{column}' holds a value that is not {_kind_name(kind)}")
        return numbers.astype(OPTIONAL_INT)
    return numbers.astype(FLOAT)


def _kind_name(kind: str) -> str:
    return {FLOAT: "a number", INT: "an integer", OPTIONAL_INT: "an integer", BOOL: "True or False"}.get(kind, kind)
