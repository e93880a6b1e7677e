"""Gold tables from Spark, compared value by value with an independent DuckDB computation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows.aggregate import GOLD_TABLES, run_aggregate
from flows.flow import ingest
from tests.conftest import fast_settings
from tests.gold_reference import reference
from tests.goldview import assert_same_table, read_gold, required


def quiet(line: str) -> None:
    """Spark's log is not needed by these tests."""


@pytest.fixture(scope="module")
def emulator_lake(emulator_session, tmp_path_factory) -> Iterator[Path]:
    """The emulator's data ingested, then aggregated once with local[2]."""
    emulator_session.reset()
    lake = tmp_path_factory.mktemp("gold") / "lake"
    settings = fast_settings(emulator_session, str(lake), spark_master="local[2]")
    ingest(settings=settings)
    run_aggregate(settings, on_line=quiet)
    yield lake
    emulator_session.reset()


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_gold_table_equals_independent_duckdb_computation(emulator_lake, table):
    gold = read_gold(emulator_lake, table)

    assert len(gold) > 0
    assert_same_table(gold, reference(emulator_lake, table), table)


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_csv_is_the_whole_table_with_header_and_text_codes(emulator_lake, table):
    csv = pd.read_csv(emulator_lake / "gold" / f"{table}.csv", dtype=str, keep_default_na=False)

    assert list(csv.columns[: len(required(table))]) == required(table)
    assert len(csv) == len(read_gold(emulator_lake, table))
    for code in ("code_departement", "code_commune"):
        if code in csv and table != "conso_adresse":  # Enedis' sample has no Corsican address
            assert csv[code].str.startswith("0").any()
            assert csv[code].str.startswith("2A").any()


def test_publish_manifest_records_tables_and_checks(emulator_lake):
    manifests = sorted((emulator_lake / "_manifests" / "publish").glob("*.json"))
    manifest = pd.read_json(manifests[-1], typ="series")

    assert set(manifest["tables"]) == set(GOLD_TABLES)
    assert {c["name"] for c in manifest["checks"]} == {
        "communes_vs_departements",
        "departements_vs_regions",
        "ore_vs_odre_national",
        "daily_vs_annual",
        "half_hour_completeness",
    }
    regions = next(c for c in manifest["checks"] if c["name"] == "departements_vs_regions")
    assert regions["status"] == "ok"
    assert not (emulator_lake / "gold" / "_staging").exists() or not any(
        (emulator_lake / "gold" / "_staging").iterdir()
    )
