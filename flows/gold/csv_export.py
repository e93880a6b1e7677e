"""`gold/<table>.csv`: one CSV per gold table, streamed from the Parquet files the job wrote.

The Spark job writes every table with its rows in key order: its files read in path order
(`annee=YYYY/` folders ascending, then file names, which follow the job's range
partitions) give the rows sorted by `GoldTable.keys` (flows/gold/tables.py). So the CSV
needs no sort: batches are read file after file and written as they come, in memory
bounded by one batch, and the order is checked as they go (rows out of key order, or two
rows with one key, stop the publish: the job broke its contract).

Format: UTF-8, comma, one header line, columns in the contract's order. Doubles are
written as decimals with six places, rounded half up from the shortest decimal that
reads back as the same double (as Spark's cast to decimal(38, 6) did), so `1e-07` is
`0.000000` and `2.5` is `2.500000`; integers and dates as themselves (`2023-01-31`);
text between double quotes (a quote doubled), so an empty text (`""`) and a missing
value (nothing) differ.
"""

from __future__ import annotations

import io
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flows.errors import PipelineError
from flows.gold.tables import PARTITION, GoldTable
from flows.lake import layout
from flows.lake.fs import Lake

BATCH_ROWS = 64_000
RENDER_THREADS = min(4, os.cpu_count() or 1)  # pyarrow and NumPy release the GIL
AHEAD = 2 * RENDER_THREADS  # batches in flight: memory stays bounded
DECIMALS = 6
DECIMAL = pa.decimal128(38, DECIMALS)
_QUANTUM = Decimal(1).scaleb(-DECIMALS)
_CONTEXT = Context(prec=80)  # room for 38 digits and more
# Beyond this magnitude a double's binary value and its shortest decimal can round apart.
_EXACT_BELOW = 1e8


class CsvError(PipelineError):
    """A staged table's files cannot make its CSV (out of key order, or a repeated key)."""


@dataclass(frozen=True)
class CsvReport:
    """What writing one CSV did."""

    rows: int
    bytes: int
    seconds: float


def parquet_files(lake: Lake, folder: str) -> list[str]:
    """A table's Parquet files in row order: year folders ascending, then file names."""
    return sorted(lake.files_below(folder, ".parquet"), key=_year_then_name)


def _year_then_name(name: str) -> tuple[int, str]:
    head, _, tail = name.partition("/")
    year = layout.year_of(head)
    return (year if year is not None else -1, tail)


def decimal_text(values: pa.Array) -> pa.Array:
    """Doubles as decimal(38, 6), rounded half up from their shortest decimal form."""
    doubles = values.to_numpy(zero_copy_only=False)
    fast = pc.cast(pc.round(values, DECIMALS, round_mode="half_up"), DECIMAL, safe=False)
    with np.errstate(invalid="ignore"):
        scaled = np.abs(doubles) * 10**DECIMALS
        # Near a half, or too large for 6 exact places: decide from the shortest decimal.
        doubtful = (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6 + scaled * 2.0**-48) | (
            np.abs(doubles) >= _EXACT_BELOW
        )
    doubtful &= np.isfinite(doubles)
    if not doubtful.any():
        return fast
    exact = fast.to_pylist()
    for index in np.flatnonzero(doubtful):
        shortest = Decimal(repr(float(doubles[index])))
        rounded = shortest.quantize(_QUANTUM, ROUND_HALF_UP, context=_CONTEXT)
        exact[index] = _CONTEXT.plus(rounded) if rounded else Decimal(0).quantize(_QUANTUM)
    return pa.array(exact, DECIMAL)


def _batches(lake: Lake, folder: str, table: GoldTable) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Every row of the staged table in file order, with `annee` from the folder names, as
    batches of the contract's columns."""
    for name in parquet_files(lake, folder):
        year = layout.year_of(name.partition("/")[0])
        with lake.fs.open(lake.path(f"{folder}/{name}"), "rb") as handle:
            reader = pq.ParquetFile(handle)
            stored = [c for c in table.columns if c != PARTITION]
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=stored):
                columns = []
                for column in table.columns:
                    if column == PARTITION and PARTITION not in batch.schema.names:
                        columns.append(pa.array(np.full(batch.num_rows, year, np.int32)))
                    else:
                        columns.append(batch.column(column))
                yield name, pa.RecordBatch.from_arrays(columns, names=list(table.columns))


def _printable(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = [
        decimal_text(column) if pa.types.is_floating(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _order_breaks(previous: pa.RecordBatch | None, batch: pa.RecordBatch,
                  keys: tuple[str, ...]) -> int | None:  # fmt: skip
    """Index in `batch` of the first row not strictly after the row before it in key order
    (nulls first, text by bytes); None when the batch continues the order."""
    rows = pa.Table.from_batches([b for b in (previous, batch) if b is not None])
    if rows.num_rows < 2:
        return None
    after = np.zeros(rows.num_rows - 1, dtype=bool)  # decided: strictly after
    before = np.zeros(rows.num_rows - 1, dtype=bool)  # decided: before (a break)
    for key in keys:
        column = rows.column(key).combine_chunks()
        prev, cur = column.slice(0, len(column) - 1), column.slice(1)
        prev_null = pc.is_null(prev).to_numpy(zero_copy_only=False)
        cur_null = pc.is_null(cur).to_numpy(zero_copy_only=False)
        less = pc.fill_null(pc.less(cur, prev), False).to_numpy(zero_copy_only=False)
        greater = pc.fill_null(pc.greater(cur, prev), False).to_numpy(zero_copy_only=False)
        open_ = ~(after | before)
        before |= open_ & (less | (~prev_null & cur_null))
        after |= open_ & (greater | (prev_null & ~cur_null))
    broken = np.flatnonzero(~after)  # before, or equal on every key
    if not len(broken):
        return None
    offset = 0 if previous is None else previous.num_rows
    return int(broken[0]) + 1 - offset


def _rendered(previous: pa.RecordBatch | None, batch: pa.RecordBatch,
              table: GoldTable) -> tuple[int | None, bytes]:  # fmt: skip
    """A batch's CSV lines, or where it breaks the key order (index in the batch)."""
    broken = _order_breaks(previous, batch, table.keys)
    if broken is not None:
        return broken, b""
    buffer = io.BytesIO()
    pacsv.write_csv(_printable(batch), buffer, pacsv.WriteOptions(include_header=False))
    return None, buffer.getvalue()


def write_csv(lake: Lake, folder: str, table: GoldTable, target: str,
              expected_rows: int | None = None) -> CsvReport:  # fmt: skip
    """Stream a staged table's Parquet files into one CSV at `target` (lake-relative).

    The batches are read in file order by this thread and rendered (order check, decimals,
    CSV) by `RENDER_THREADS` others, at most `AHEAD` batches in flight; their lines are
    written in the order they were read."""
    started = time.perf_counter()
    rows = 0
    header = (",".join(table.columns) + "\n").encode()
    path = lake.path(target)
    if lake.is_local:
        lake.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pending: deque[tuple[str, int, Future[tuple[int | None, bytes]]]] = deque()

    def write_next() -> int:
        name, first_row, future = pending.popleft()
        broken, lines = future.result()
        if broken is not None:
            raise CsvError(f"gold table {table.name}: row {first_row + broken + 1} of the staged "
                           f"files is not after the row before it in key order "
                           f"{list(table.keys)} (file {name})",
                           url=lake.path(folder))  # fmt: skip
        out.write(lines)
        return len(lines)

    with ThreadPoolExecutor(RENDER_THREADS) as pool, lake.fs.open(path, "wb") as out:
        out.write(header)
        written = len(header)
        previous: pa.RecordBatch | None = None
        for name, batch in _batches(lake, folder, table):
            pending.append((name, rows, pool.submit(_rendered, previous, batch, table)))
            rows += batch.num_rows
            previous = batch.slice(batch.num_rows - 1) if batch.num_rows else previous
            while len(pending) > AHEAD:
                written += write_next()
        while pending:
            written += write_next()
    if expected_rows is not None and rows != expected_rows:
        raise CsvError(f"gold table {table.name}: the job reported {expected_rows} rows, "
                       f"its files hold {rows}", url=lake.path(folder))  # fmt: skip
    return CsvReport(rows=rows, bytes=written, seconds=round(time.perf_counter() - started, 2))
