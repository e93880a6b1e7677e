"""Tableau Hyper extracts of the gold tables, read back with a separate Hyper process."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import duckdb
import pandas as pd
import pytest

from flows.errors import PipelineError
from flows.gold.tables import GOLD_TABLES
from flows.lake.fs import Lake
from flows.outputs.tableau import HYPER_MISSING, hyper_available, write_hyper_extracts
from tests.support.goldview import assert_same_table, read_gold, required

hyperapi = pytest.importorskip("tableauhyperapi")

pytestmark = [pytest.mark.spark]


def quiet(line: str) -> None:
    """Spark's log is not needed by these tests."""


@pytest.fixture(scope="module")
def extracts(emulator_lake) -> dict[str, dict]:
    """Every gold table written as a Hyper extract."""
    return write_hyper_extracts(Lake(str(emulator_lake)), GOLD_TABLES)


@pytest.fixture(scope="module")
def hyper(tmp_path_factory) -> Iterator[object]:
    """A Hyper process of the test's own, to read the extracts back."""
    logs = tmp_path_factory.mktemp("hyper-logs")
    with hyperapi.HyperProcess(
        hyperapi.Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": str(logs)}
    ) as process:
        yield process


def read_extract(hyper, path: Path, table: str) -> pd.DataFrame:
    """The one table of an extract, `"Extract"."<table>"`, with dates as datetime.date."""
    with hyperapi.Connection(hyper.endpoint, str(path)) as connection:
        assert connection.catalog.get_table_names("Extract") == [
            hyperapi.TableName("Extract", table)
        ]
        name = hyperapi.TableName("Extract", table)
        columns = [c.name.unescaped for c in connection.catalog.get_table_definition(name).columns]
        rows = connection.execute_list_query(f"SELECT * FROM {name}")
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame.map(lambda v: v.to_date() if isinstance(v, hyperapi.Date) else v)


def hyper_scalar(hyper, path: Path, query: str) -> object:
    with hyperapi.Connection(hyper.endpoint, str(path)) as connection:
        return connection.execute_scalar_query(query)


def parquet_scalar(lake: Path, table: str, expression: str) -> object:
    """One aggregate over the table's current Parquet files, computed by DuckDB."""
    glob = lake / "gold" / table / "annee=*" / "*.parquet"
    return duckdb.sql(
        f"select {expression} from read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()[0][0]


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_extract_has_the_gold_table_row_count(emulator_lake, extracts, hyper, table):
    path = emulator_lake / "gold" / f"{table}.hyper"
    rows = parquet_scalar(emulator_lake, table, "count(*)")

    assert rows > 0
    assert extracts[table]["rows"] == rows
    assert extracts[table]["path"] == str(path)
    assert hyper_scalar(hyper, path, f'SELECT COUNT(*) FROM "Extract"."{table}"') == rows


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_extract_holds_the_gold_table_value_by_value(emulator_lake, extracts, hyper, table):
    extract = read_extract(hyper, emulator_lake / "gold" / f"{table}.hyper", table)

    assert set(required(table)) <= set(extract.columns)
    assert_same_table(extract, read_gold(emulator_lake, table), table)


@pytest.mark.parametrize(
    ("table", "column"),
    [("conso_region", "conso_totale_mwh"), ("conso_journaliere", "electricite_mwh")],
)
def test_extract_energy_sum_equals_the_parquet_sum(emulator_lake, extracts, hyper, table, column):
    path = emulator_lake / "gold" / f"{table}.hyper"

    total = hyper_scalar(hyper, path, f'SELECT SUM("{column}") FROM "Extract"."{table}"')

    assert total == pytest.approx(parquet_scalar(emulator_lake, table, f"sum({column})"), abs=1e-6)


def test_extract_types_suit_tableau(emulator_lake, extracts, hyper):
    path = emulator_lake / "gold" / "conso_journaliere.hyper"
    name = hyperapi.TableName("Extract", "conso_journaliere")

    with hyperapi.Connection(hyper.endpoint, str(path)) as connection:
        types = {
            c.name.unescaped: c.type for c in connection.catalog.get_table_definition(name).columns
        }

    assert types["date"] == hyperapi.SqlType.date()
    assert types["annee"] == hyperapi.SqlType.big_int()
    assert types["code_region"] == hyperapi.SqlType.text()
    assert types["electricite_mwh"] == hyperapi.SqlType.double()
    assert types["nb_pas_gaz"] == hyperapi.SqlType.big_int()


def gold_copy(source: Path, target: Path, tables: list[str]) -> Path:
    """A new lake holding some gold tables of another (Parquet folders only)."""
    for table in tables:
        shutil.copytree(source / "gold" / table, target / "gold" / table)
    return target


def test_rewrite_replaces_the_extract_without_staging_or_logs_left(
    emulator_lake, hyper, tmp_path, monkeypatch
):
    lake = gold_copy(emulator_lake, tmp_path / "lake", ["conso_region"])
    (lake / "gold" / "conso_region.hyper").write_bytes(b"an older extract")
    monkeypatch.chdir(tmp_path)

    written = write_hyper_extracts(Lake(str(lake)), ["conso_region"])

    assert written["conso_region"]["rows"] == parquet_scalar(lake, "conso_region", "count(*)")
    assert (
        len(read_extract(hyper, lake / "gold" / "conso_region.hyper", "conso_region"))
        == (written["conso_region"]["rows"])
    )
    assert not [p for p in (lake / "gold").rglob("*") if "_staging" in p.parts and p.is_file()]
    assert not list(tmp_path.glob("*.log"))


def test_missing_package_logs_the_message_once_and_writes_nothing(
    emulator_lake, tmp_path, monkeypatch, caplog
):
    lake = gold_copy(emulator_lake, tmp_path / "lake", ["conso_region", "conso_nationale"])
    monkeypatch.setitem(sys.modules, "tableauhyperapi", None)

    with caplog.at_level(logging.WARNING, logger="flows.outputs.tableau"):
        written = write_hyper_extracts(Lake(str(lake)), ["conso_region", "conso_nationale"])

    assert written == {}
    assert not hyper_available()
    assert [r.getMessage() for r in caplog.records] == [HYPER_MISSING]
    assert "uv sync --extra tableau" in HYPER_MISSING
    assert not list(lake.rglob("*.hyper"))


def test_unreadable_parquet_raises_an_error_naming_table_and_path(emulator_lake, tmp_path):
    lake = gold_copy(emulator_lake, tmp_path / "lake", ["conso_region"])
    victim = next((lake / "gold" / "conso_region" / "annee=2022").glob("*.parquet"))
    victim.write_bytes(b"this is not a parquet file" * 100)

    with pytest.raises(PipelineError) as failure:
        write_hyper_extracts(Lake(str(lake)), ["conso_region"])

    assert "conso_region" in str(failure.value)
    assert str(lake / "gold" / "conso_region.hyper") in str(failure.value)
    assert not (lake / "gold" / "conso_region.hyper").exists()


def test_missing_table_raises_an_error_naming_table_and_path(tmp_path):
    with pytest.raises(PipelineError) as failure:
        write_hyper_extracts(Lake(str(tmp_path / "lake")), ["conso_region"])

    assert "gold table conso_region" in str(failure.value)
    assert str(tmp_path / "lake" / "gold" / "conso_region") in str(failure.value)


@pytest.mark.s3
def test_s3_lake_extract_reads_only_the_files_of_the_pointer(
    emulator_lake, hyper, s3_endpoint, s3_bucket, tmp_path
):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    folder = emulator_lake / "gold" / "conso_region"
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            key = f"lake/gold/conso_region/{path.relative_to(folder)}"
            s3.upload_file(str(path), s3_bucket, key)
    first = next(folder.glob("annee=2022/*.parquet"))
    s3.upload_file(str(first), s3_bucket, "lake/gold/conso_region/annee=2022/not-committed.parquet")

    lake = Lake(f"s3://{s3_bucket}/lake", s3_endpoint=s3_endpoint)
    written = write_hyper_extracts(lake, ["conso_region"])

    local = tmp_path / "conso_region.hyper"
    s3.download_file(s3_bucket, "lake/gold/conso_region.hyper", str(local))
    rows = parquet_scalar(emulator_lake, "conso_region", "count(*)")
    assert written["conso_region"] == {
        "rows": rows,
        "path": f"s3://{s3_bucket}/lake/gold/conso_region.hyper",
        "seconds": written["conso_region"]["seconds"],
    }
    assert_same_table(
        read_extract(hyper, local, "conso_region"),
        read_gold(emulator_lake, "conso_region"),
        "conso_region",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if "/_staging/" in k]
