"""Against the emulator: a systematic rejection fails its partition; typed codes are restored."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.flow import IngestFailed, ingest, pipeline
from flows.lake.fs import Lake
from flows.lake.layout import new_load_id
from flows.sources.catalog import get_dataset
from flows.sources.ingest import load_partition, plan_dataset
from flows.sources.portals import client_for
from tests.support.lakeview import counts_by_year, read_raw

pytestmark = pytest.mark.usefixtures("prefect_server")


def quarantine_files(settings, dataset: str) -> list[Path]:
    return sorted((Path(settings.lake) / "quarantine" / dataset).rglob("*.parquet"))


def manifest(settings) -> dict:
    (path,) = (Path(settings.lake) / "_manifests" / "loads").glob("*.json")
    return json.loads(path.read_text())


def test_every_row_failing_one_rule_fails_the_partition_and_the_run_publishes_nothing(
    emulator, settings
):
    rows = emulator.count("regionale_annuelle", 2023)
    assert rows == 13  # limit: max(5 rows, 0.1 % of 13) = 5
    for row in range(rows):
        emulator.data_fault(
            "negative", "regionale_annuelle", 2023, column="consommation_brute_electricite_rte",
            row=row,
        )  # fmt: skip

    with pytest.raises(IngestFailed) as failure:
        pipeline(["regionale_annuelle"], [2023], settings=settings)

    message = str(failure.value)
    assert "systematic rejection: 13 of 13 rows quarantined (limit 5)" in message
    assert (
        "most common reason: consommation_brute_electricite_rte: "
        "greater_than_or_equal_to(0.0) failed (13 rows)"
    ) in message
    assert "regionale_annuelle/annee=2023" in message and "/exports/csv" in message
    lake = Path(settings.lake)
    assert not (lake / "raw" / "regionale_annuelle" / "annee=2023").exists()
    assert not (lake / "gold").exists()
    staging = list((lake / "raw" / "regionale_annuelle").rglob("*.parquet"))
    assert staging == []
    loaded = manifest(settings)
    (entry,) = loaded["partitions"]
    assert entry["status"] == "failed" and "systematic rejection" in entry["reason"]
    exports = [
        r
        for r in emulator.requests
        if r["dataset"] == "regionale_annuelle" and r["kind"] == "export"
    ]
    assert len(exports) == 1  # a permanent failure: the partition is not retried
    # the rejected rows are kept for inspection, under the failed load's id
    (kept,) = quarantine_files(settings, "regionale_annuelle")
    bad = pq.read_table(kept).to_pandas()
    assert len(bad) == 13
    assert set(bad["_load_id"]) == {loaded["load_id"]}
    served = emulator.table("regionale_annuelle", 2023)
    assert sorted(bad["consommation_brute_electricite_rte"].astype(int)) == sorted(
        served["consommation_brute_electricite_rte"].astype(int)
    )
    assert all(r.endswith("failed for " + v) for r, v in zip(bad["_reason"],
               bad["consommation_brute_electricite_rte"], strict=True))  # fmt: skip


def negative_rows(emulator, count: int) -> None:
    for row in range(count):
        emulator.data_fault("negative", "commune", 2023, column="conso_totale_mwh", row=row)


def test_quarantine_up_to_the_limit_loads_and_one_more_row_fails(emulator, settings):
    served = emulator.count("commune", 2023)
    assert served == 9392  # limit: max(5, int(0.001 * 9392)) = 9 rows
    negative_rows(emulator, 9)

    report = ingest(["commune"], [2023], settings=settings)

    (result,) = report.results
    assert result.status == "loaded" and result.rows_quarantined == 9
    assert counts_by_year(Path(settings.lake), "commune") == {2023: served - 9}
    before = read_raw(Path(settings.lake), "commune")

    emulator.reset()
    negative_rows(emulator, 10)
    with pytest.raises(IngestFailed) as failure:
        ingest(["commune"], [2023], force=True, settings=settings)

    message = str(failure.value)
    assert "systematic rejection: 10 of 9,392 rows quarantined (limit 9)" in message
    assert "conso_totale_mwh: greater_than_or_equal_to(0.0) failed (10 rows)" in message
    after = read_raw(Path(settings.lake), "commune")
    assert len(after) == len(before) == served - 9  # the committed partition is untouched


def test_a_partition_bound_to_fail_stops_pulling_at_the_first_chunk_over_the_limit(
    emulator, settings
):
    settings.datafair_page_size = 1000
    settings.validation_chunk_rows = 1000
    negative_rows(emulator, 10)

    with pytest.raises(IngestFailed) as failure:
        ingest(["commune"], [2023], settings=settings)

    message = str(failure.value)
    assert (
        "systematic rejection: 10 of the first 1,000 rows quarantined, transfer stopped "
        "(the portal counts 9,392; limit 9)"
    ) in message
    pages = [
        r
        for r in emulator.requests
        if r["dataset"] == "commune" and r["kind"] == "lines" and r["query"].get("size") != "0"
    ]
    assert 1 <= len(pages) < 9392 // 1000
    assert not (Path(settings.lake) / "raw" / "commune" / "annee=2023").exists()


def test_codes_declared_integer_by_the_portal_are_restored_and_flagged(emulator, settings):
    report = ingest(["departement"], [2023], settings=settings)
    (entry,) = manifest(settings)["partitions"]
    assert entry["codes_restored"] == {}  # declared as strings: nothing touched
    assert report.results[0].codes_restored == {}

    dataset = get_dataset("departement")
    lake = Lake(settings.lake)
    client = client_for(dataset, settings)
    try:
        (plan,) = plan_dataset(dataset, [2023], True, client, lake)
    finally:
        client.close()
    declared = dict(plan.source_types)
    assert declared["code_departement"] == "string"  # the emulator's Data Fair schema
    declared |= {"code_departement": "integer", "code_region": "integer"}
    typed = dataclasses.replace(plan, source_types=tuple(sorted(declared.items())))

    result = load_partition(typed, settings, lake, new_load_id())

    served = emulator.table("departement", 2023)
    digits = served["code_departement"].astype(str).str.fullmatch(r"\d+")
    assert result.codes_restored == {
        "code_departement": int(digits.sum()),  # every code but 2A and 2B
        "code_region": len(served),
    }
    assert result.to_dict()["codes_restored"] == result.codes_restored
    stored = read_raw(Path(settings.lake), "departement")
    assert sorted(stored["code_departement"]) == sorted(served["code_departement"].astype(str))
    assert sorted(stored["code_region"]) == sorted(served["code_region"].astype(str))
    assert {"01", "2A", "971"} <= set(stored["code_departement"])
    assert isinstance(stored["code_region"].iloc[0], str)
    assert pd.Series(stored["code_region"]).str.len().eq(2).all()
