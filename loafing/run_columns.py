"""The columns that identify a run in every tidy table, and the ones training methods add (see `loafing.schema`).

Declared apart from the tables themselves so that a training method can declare its columns without the tables'
reading and writing, and neither imports the method registry or torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from loafing.method_styles import method_style, variant_text

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


def method_run_columns() -> dict[str, MethodColumn]:
    """The run columns the registered training methods add, by name."""
    return dict(_method_run_columns)


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
