"""One row per key: a tidy table's rows that repeat one measurement, kept once."""
from __future__ import annotations

import pandas as pd

from loafing.errors import LoafingError
from loafing.schema import CALIBRATION_COLUMNS, TABLES


def one_row_per_key(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """`df` with one row per key of `table`, the first of rows repeating one measurement; rows of one key that
    measured different numbers are two networks under one name: a one-line error."""
    key = list(TABLES[table].key)
    if not key or not set(key) <= set(df.columns):
        return df
    repeated = df[df.duplicated(key, keep=False)]
    for _, rows in repeated.groupby(key, dropna=False, sort=False):
        # The inside-vs-alone grid measures again plans a run's own measurement has, with the same calibration;
        # a GPU may still flip an image or so between the two passes.
        same_calibration = len(rows[[c for c in CALIBRATION_COLUMNS if c in rows.columns]].drop_duplicates()) == 1
        one_image = 100.0 / rows["n_examples"].max() if "n_examples" in rows.columns else 0.0
        if not same_calibration or rows["top1"].max() - rows["top1"].min() > one_image + 1e-9:
            first = rows.iloc[0]
            raise LoafingError(f"{TABLES[table].file}: run {first['run']!r} holds two different measurements of "
                               f"plan {first['plan']} ({', '.join(f'{v:.2f}%' for v in rows['top1'].unique())}): two "
                               "networks under one name? give them distinct names (run folders, checkpoint files)")
    # Counted twice, a repeated plan would weigh twice in every mean over a run's sub-networks.
    return df.drop_duplicates(key, ignore_index=True)
