"""Reading gold tables back as any plain Parquet reader would, and comparing them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows.gold.tables import TABLES
from flows.lake import layout

KEYS = {name: list(table.keys) for name, table in TABLES.items()}
REQUIRED = {name: list(table.columns) for name, table in TABLES.items()}


def required(table: str) -> list[str]:
    """The columns docs/CONTRACT.md requires, in its order (flows.gold.tables)."""
    return list(REQUIRED[table])


def read_gold(lake: Path, table: str) -> pd.DataFrame:
    """A gold table: every Parquet file below gold/<table>/ outside `_`/`.` folders."""
    glob = lake / layout.gold_table(table) / f"{layout.YEAR_FOLDER}*" / "*.parquet"
    return duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning = true)").df()


def canonical(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Required columns in contract order, rows sorted by the table's key."""
    frame = frame[required(table)].copy()
    if "date" in frame:
        frame["date"] = pd.to_datetime(frame["date"]).dt.date
    frame["annee"] = frame["annee"].astype("int64")
    keys = KEYS[table]
    return frame.sort_values(keys, na_position="first").reset_index(drop=True)


def assert_same_table(actual: pd.DataFrame, expected: pd.DataFrame, table: str) -> None:
    """Value by value: exact for text and integers, 1e-9 relative for energies."""
    actual, expected = canonical(actual, table), canonical(expected, table)
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows vs {len(expected)}"
    for column in required(table):
        left, right = actual[column], expected[column]
        assert (left.isna().to_numpy() == right.isna().to_numpy()).all(), f"{table}.{column} nulls"
        present = left.notna().to_numpy()
        if column.endswith("_mwh"):
            ok = np.isclose(
                left[present].astype(float), right[present].astype(float), rtol=1e-9, atol=1e-9
            )
            assert ok.all(), (
                f"{table}.{column}: {left[present][~ok].head()} vs {right[present][~ok].head()}"
            )
        else:
            assert [_plain(v) for v in left[present]] == [_plain(v) for v in right[present]], (
                f"{table}.{column} differs"
            )


def _plain(value: object) -> object:
    """Integers however a reader typed them (1, 1.0, Int64), text as text."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    return str(value)
