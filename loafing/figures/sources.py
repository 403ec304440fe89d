"""Where the figures' rows come from: every CSV of a results folder, recognised by its columns, read by kind.

A results folder holds the tables its writers named (`measure.csv`) or those a user named with `--out` (`ct.csv`,
`st.csv`): a CSV is the table whose columns it holds (`loafing.schema.table_kind`), and the files of one table are
read together. A file named as a table (`measure.csv`) that lacks some of its columns is still that table, so that
reading it names the missing column; a CSV that is no table of ours is left out with a warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from loafing.errors import LoafingError, LoafingWarning
from loafing.schema import TABLES, NotATable, header_columns, read_table, table_kind
from loafing.table_keys import one_row_per_key

DEFAULT_NAMES = {table.file: name for name, table in TABLES.items()}


@dataclass
class Found:
    """The CSVs of a results folder: per table, its files (by name); and the files that are no table, with why."""

    files: dict[str, list[Path]] = field(default_factory=dict)
    ignored: list[tuple[Path, str]] = field(default_factory=list)


def _kind(path: Path) -> str:
    """The table `path` holds; NotATable (with the reason) where it holds none."""
    header = header_columns(path)
    kind = table_kind(header)
    named = DEFAULT_NAMES.get(path.name)
    if kind is not None:
        return kind
    if named is not None and (not header or set(header) & set(TABLES[named].dtypes())):
        return named  # read as what its name says, so that a missing column is named (or it has no rows)
    if not header:
        raise NotATable(f"{path}: an empty file, no results table")
    raise NotATable(f"{path}: not a results table: its columns are those of none "
                    f"({', '.join(header[:4])}{', ...' if len(header) > 4 else ''})")


def find_tables(results_dir: Path) -> Found:
    """Every CSV in `results_dir` (not in its subfolders, not hidden ones), sorted by name, by the table it holds."""
    found = Found()
    paths = sorted(p for p in results_dir.iterdir() if p.suffix.lower() == ".csv" and not p.name.startswith(".")
                   and p.is_file())
    for path in paths:
        try:
            found.files.setdefault(_kind(path), []).append(path)
        except NotATable as err:
            found.ignored.append((path, str(err)))
    return found


def warn_ignored(found: Found) -> None:
    """One warning per CSV that is no results table."""
    for _, reason in found.ignored:
        warnings.warn(LoafingWarning(f"{reason}; skipped"))


# What two files of a table without a key may not both hold: rows of one run (of one destruct mode). A copy of a
# file beside it would otherwise count every epoch, every destroyed network twice (Table r4's time doubled).
UNIT = {"destruct": ("run", "mode")}


def _refuse_overlaps(paths: list[Path], frames: list[pd.DataFrame], table: str) -> None:
    """A one-line error when two files of `table` hold rows of the same run (and destruct mode)."""
    seen: dict[tuple, Path] = {}
    for path, frame in zip(paths, frames):
        columns = [c for c in UNIT.get(table, ("run",)) if c in frame.columns]
        for unit in frame[columns].drop_duplicates().itertuples(index=False):
            if tuple(unit) in seen:
                raise LoafingError(f"{seen[tuple(unit)]} and {path} both hold {table} rows of "
                                   f"{', '.join(f'{c} {v!r}' for c, v in zip(columns, unit))}: keep one of them")
            seen[tuple(unit)] = path


def read_kind(paths: list[Path], table: str) -> pd.DataFrame:
    """The rows of every file of one table, as the figures take them: one row per key (a plan measured twice, in
    one file or in two, counts once)."""
    frames = [read_table(path, table, required=()) for path in paths]
    if len(frames) == 1:
        return one_row_per_key(frames[0], table)
    if not TABLES[table].key:
        _refuse_overlaps(paths, frames, table)
    rows = pd.concat([frame for frame in frames if len(frame)] or frames[:1], ignore_index=True)
    for column in rows.columns:  # a text column one file lacks reads as empty cells, as in a file that has it
        if rows[column].dtype == object:
            rows[column] = rows[column].where(rows[column].notna(), "")
    return one_row_per_key(rows, table)
