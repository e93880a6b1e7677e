"""Row sources behind a partition: an in-memory Arrow table or a position-addressed generator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "int": pa.int64(),
    "double": pa.float64(),
    "year": pa.int64(),
    "date": pa.date32(),
    "datetime": pa.timestamp("s", tz="UTC"),
    "geo_point_2d": pa.string(),
    "geo_shape": pa.string(),
}


class Source(Protocol):
    """Anything that yields the rows at given positions, column by column."""

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        ...

    @property
    def column_names(self) -> list[str]:
        """Columns it can produce, in order."""
        ...

    def take(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """The rows at `positions` (int64 array), restricted to `columns`."""
        ...


class TableSource:
    """A source backed by a materialised Arrow table."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        """Columns, in order."""
        return list(self.table.column_names)

    def take(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows at `positions`; contiguous runs are sliced without copying."""
        table = self.table.select(list(columns))
        n = len(positions)
        if n == 0:
            return table.slice(0, 0)
        if is_contiguous(positions):
            return table.slice(int(positions[0]), n)
        return table.take(pa.array(positions, pa.int64()))


def is_contiguous(positions: np.ndarray) -> bool:
    """True when positions are a strictly increasing run with step 1."""
    n = len(positions)
    if n == 0:
        return True
    return int(positions[-1]) - int(positions[0]) == n - 1 and bool(np.all(np.diff(positions) == 1))


def scale_measures(table: pa.Table, columns: Iterable[str], factor: float) -> pa.Table:
    """Multiply numeric columns by `factor` (doubles rounded to 3 decimals, ints to units)."""
    if factor == 1.0:
        return table
    for name in columns:
        if name not in table.column_names:
            continue
        col = table[name]
        if pa.types.is_integer(col.type):
            scaled = pc.cast(pc.round(pc.multiply(pc.cast(col, pa.float64()), factor)), col.type)
        elif pa.types.is_floating(col.type):
            scaled = pc.round(pc.multiply(col, factor), 3)
        else:
            continue
        table = table.set_column(table.column_names.index(name), name, scaled)
    return table
