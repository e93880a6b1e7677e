"""gold/<table>.csv streamed from sorted Parquet files: whatever the split into years, files
and batches, the CSV is the rows in order, rendered by an independent formatter here; rows
out of key order, a repeated key or a wrong row count stop the publish."""

from __future__ import annotations

import itertools
from decimal import ROUND_HALF_UP, Context, Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.gold import csv_export
from flows.gold.csv_export import CsvError, decimal_text, write_csv
from flows.gold.tables import GoldTable
from flows.lake.fs import Lake

TABLE = GoldTable(
    "conso_test",
    "year x code x name",
    ("adresse",),
    keys=("annee", "code", "name"),
    columns=("annee", "code", "name", "value", "count"),
)
SCHEMA = pa.schema(
    [("code", pa.string()), ("name", pa.string()), ("value", pa.float64()), ("count", pa.int64())]
)
CONTEXT = Context(prec=80)


def reference_decimal(value: float | None) -> str:
    """Half up to six places from the shortest decimal of the double (Spark's cast)."""
    if value is None:
        return ""
    rounded = Decimal(repr(value)).quantize(Decimal("0.000001"), ROUND_HALF_UP, context=CONTEXT)
    return str(rounded if rounded else Decimal("0.000000"))


def render(row: tuple[int, str | None, str | None, float | None, int | None]) -> str:
    """One CSV line, by hand: text quoted (quotes doubled), nothing for a missing value."""
    year, code, name, value, count = row

    def text(item: str | None) -> str:
        return "" if item is None else '"' + item.replace('"', '""') + '"'

    return ",".join(
        [str(year), text(code), text(name), reference_decimal(value),
         "" if count is None else str(count)]
    ) + "\n"  # fmt: skip


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30)
near_half = st.builds(
    lambda whole, frac: float(f"{whole}.{frac:06d}5"),
    st.integers(0, 10**9),
    st.integers(0, 999_999),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), finite, near_half), max_size=60))
def test_decimals_round_half_up_from_the_shortest_decimal(values: list[float | None]) -> None:
    got = decimal_text(pa.array(values, pa.float64())).to_pylist()
    assert ["" if v is None else str(v) for v in got] == [reference_decimal(v) for v in values]


texts = st.one_of(st.none(), st.text(alphabet='ab ,"\n\té', max_size=6))
rows_strategy = st.lists(
    st.tuples(
        st.integers(2020, 2023),
        texts,
        texts,
        st.one_of(st.none(), finite, near_half),
        st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    ),
    max_size=80,
    unique_by=lambda row: (row[0], row[1], row[2]),
)


def _key(row: tuple) -> tuple:
    """Key order as Spark sorts: nulls first, text by UTF-8 bytes."""
    return tuple((item is not None, item.encode() if isinstance(item, str) else item)
                 for item in row[:3])  # fmt: skip


def _stage(folder: Path, rows: list[tuple], cuts: list[int], batch: int) -> None:
    """Rows (sorted) into year folders, each year cut into files at the given points."""
    for year in sorted({row[0] for row in rows}):
        of_year = [row[1:] for row in rows if row[0] == year]
        bounds = sorted({0, len(of_year), *[c % (len(of_year) + 1) for c in cuts]})
        for number, (start, end) in enumerate(itertools.pairwise(bounds)):
            part = of_year[start:end]
            table = pa.Table.from_pylist(
                [dict(zip(SCHEMA.names, row, strict=True)) for row in part], schema=SCHEMA
            )
            target = folder / f"annee={year}" / f"part-{number:05d}-x.c000.zstd.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target, row_group_size=max(1, batch))


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows_strategy, st.lists(st.integers(0, 200), max_size=4), st.integers(1, 7),
       st.integers(1, 9))  # fmt: skip
def test_the_csv_is_the_rows_in_order_whatever_the_split(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple],
    cuts: list[int],
    row_group: int,
    batch: int,
) -> None:
    root = tmp_path_factory.mktemp("lake")
    rows = sorted(rows, key=_key)
    _stage(root / "staged", rows, cuts, row_group)
    original = csv_export.BATCH_ROWS
    csv_export.BATCH_ROWS = batch
    try:
        report = write_csv(Lake(str(root)), "staged", TABLE, "staged.csv", len(rows))
    finally:
        csv_export.BATCH_ROWS = original
    expected = ",".join(TABLE.columns) + "\n" + "".join(render(row) for row in rows)
    written = (root / "staged.csv").read_bytes()
    assert written.decode() == expected
    assert report.rows == len(rows) and report.bytes == len(written)


def _lake_with(tmp_path: Path, rows: list[tuple], cuts: list[int] | None = None) -> Lake:
    _stage(tmp_path / "staged", rows, cuts or [], 2)
    return Lake(str(tmp_path))


def test_rows_out_of_key_order_stop_the_csv(tmp_path: Path) -> None:
    rows = [(2023, "75056", "b", 1.0, 1), (2023, "75056", "a", 2.0, 1)]
    with pytest.raises(CsvError, match=r"conso_test: row 2 .*not after.*annee=2023"):
        write_csv(_lake_with(tmp_path, rows), "staged", TABLE, "staged.csv")


def test_order_is_checked_across_files(tmp_path: Path) -> None:
    rows = [(2023, "2", "a", 1.0, 1), (2023, "1", "a", 2.0, 1)]  # one row per file
    with pytest.raises(CsvError, match="row 2"):
        write_csv(_lake_with(tmp_path, rows, cuts=[1]), "staged", TABLE, "staged.csv")


def test_a_repeated_key_stops_the_csv(tmp_path: Path) -> None:
    rows = [(2023, "1", None, 1.0, 1), (2023, "1", None, 2.0, 1)]
    with pytest.raises(CsvError, match="row 2"):
        write_csv(_lake_with(tmp_path, rows), "staged", TABLE, "staged.csv")


def test_a_null_key_sorts_first(tmp_path: Path) -> None:
    rows = [(2023, "1", None, 1.0, 1), (2023, "1", "", 2.0, 1), (2023, "1", "a", 2.0, 1)]
    report = write_csv(_lake_with(tmp_path, rows), "staged", TABLE, "staged.csv", 3)
    assert report.rows == 3


def test_a_row_count_other_than_the_jobs_stops_the_csv(tmp_path: Path) -> None:
    rows = [(2023, "1", "a", 1.0, 1)]
    with pytest.raises(CsvError, match="reported 2 rows, its files hold 1"):
        write_csv(_lake_with(tmp_path, rows), "staged", TABLE, "staged.csv", 2)


def test_year_folders_are_read_in_numeric_order(tmp_path: Path) -> None:
    names = ["annee=2023/part-00000-a.parquet", "annee=999/part-00000-a.parquet",
             "annee=2023/part-00001-a.parquet", "annee=2022/part-00010-a.parquet"]  # fmt: skip
    assert sorted(names, key=csv_export._year_then_name) == [
        "annee=999/part-00000-a.parquet",
        "annee=2022/part-00010-a.parquet",
        "annee=2023/part-00000-a.parquet",
        "annee=2023/part-00001-a.parquet",
    ]
