"""The whole pipeline against the emulator in conformance mode: the same gold as a clean run.

Conformance mode (emulator/conformance.py) randomises, from a seed, what a conforming
portal may do that the clean emulator never does: chunks down to one byte, gzip, CRLF or LF,
BOM or not, multi-megabyte quoted geo fields, 429s in each portal's real shape without
Retry-After, integer-typed codes on Data Fair, and `annee` declared date, int or text on ODS.
The gold tables must be identical, value by value, to those of the clean run (`emulator_lake`,
itself checked against DuckDB in test_gold.py). CONFORMANCE_SEEDS=1,2,3,... runs more seeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.flow import ingest
from flows.gold.aggregate import run_aggregate
from flows.gold.tables import GOLD_TABLES
from tests.conftest import fast_settings
from tests.support.goldview import assert_same_table, read_gold
from tests.support.lakeview import read_raw

pytestmark = pytest.mark.usefixtures("prefect_server")

SEEDS = [int(s) for s in os.environ.get("CONFORMANCE_SEEDS", "2,4").split(",") if s.strip()]
WINDOW_S = 0.5


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_gold_from_a_conformance_portal_equals_the_clean_run(
    emulator, emulator_lake, tmp_path, seed
):
    choices = emulator.conformance(seed, rate_window_s=WINDOW_S, rate_limit_probability=0.03)
    settings = fast_settings(
        emulator, str(tmp_path / "lake"), spark_master="local[2]", rate_limit_window_s=WINDOW_S
    )

    report = ingest(settings=settings)
    run_aggregate(settings, on_line=lambda line: None)

    stats = emulator.stats()
    print(f"seed {seed}: {json.dumps(stats)}")
    print(f"seed {seed}: {json.dumps(choices['datasets'])}")
    assert report.count("failed") == 0
    for table in GOLD_TABLES:
        clean = read_gold(emulator_lake, table)
        assert_same_table(read_gold(tmp_path / "lake", table), clean, table)
    # the run met what the mode is there for, so the comparison above means something
    assert sum(p["gzip"] for p in stats.values()) > 0
    assert sum(p["regimes"]["tiny"] for p in stats.values()) > 0
    restored = [r for r in report.results if r.codes_restored]
    int_codes = {d for d, c in choices["datasets"].items() if c["int_codes"]}
    assert {r.dataset for r in restored} == int_codes


def test_integer_typed_codes_get_their_zeros_back_and_the_manifest_says_so(emulator, settings):
    choices = emulator.conformance(4, rate_limit_probability=0.0)
    assert "code_region" in choices["datasets"]["departement"]["int_codes"]
    served = emulator.table("departement", 2023)

    report = ingest(["departement"], [2023], settings=settings)

    lake = Path(settings.lake)
    raw = read_raw(lake, "departement")
    assert sorted(raw["code_region"].unique()) == sorted(served["code_region"].unique())
    assert "01" in set(raw["code_region"])  # Guadeloupe, served as the integer 1
    assert sorted(raw["code_secteur_naf2"].dropna().unique()) == sorted(
        served["code_secteur_naf2"].dropna().unique()
    )
    (manifest,) = (lake / "_manifests" / "loads").glob("*.json")
    (entry,) = json.loads(manifest.read_text())["partitions"]
    assert entry["codes_restored"]["code_region"] == len(served)
    assert report.results[0].codes_restored == entry["codes_restored"]
