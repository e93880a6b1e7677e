"""Second runs download nothing unchanged; --force and revised sources pull again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.flow import ingest
from tests.support.lakeview import counts_by_year, read_raw

pytestmark = pytest.mark.usefixtures("prefect_server")

DATA_REQUESTS = ("export", "lines")
DATASETS = ["commune", "nationale_annuelle", "regionale_quotidienne"]


def data_requests(emulator) -> list[tuple[str, str]]:
    """(dataset, partition filter) of every data download, count probes excluded."""
    pulled = []
    for r in emulator.requests:
        query = r["query"]
        if r["kind"] not in DATA_REQUESTS or query.get("size") == "0" or "after" in query:
            continue
        year = query.get("annee_eq") or query.get("where", "").rsplit("=", 1)[-1].strip()
        pulled.append((r["dataset"], year))
    return sorted(pulled)


def test_second_run_downloads_nothing_unchanged(emulator, settings):
    first = ingest(DATASETS, settings=settings)
    assert first.count("loaded") == 3 + 3 + len(emulator.years_of("regionale_quotidienne"))
    emulator.clear_requests()

    second = ingest(DATASETS, settings=settings)

    assert data_requests(emulator) == []
    assert second.count("loaded") == 0
    assert second.count("skipped") == first.count("loaded")


def test_force_pulls_every_partition_again(emulator, settings):
    ingest(["commune", "nationale_annuelle"], [2022, 2023], settings=settings)
    emulator.clear_requests()

    report = ingest(["commune", "nationale_annuelle"], [2022, 2023], force=True, settings=settings)

    assert report.count("loaded") == 4
    assert data_requests(emulator) == [
        ("commune", "2022"),
        ("commune", "2023"),
        ("nationale_annuelle", "2022"),
        ("nationale_annuelle", "2023"),
    ]


def test_revised_year_is_the_only_partition_pulled_again(emulator, settings):
    ingest(["commune"], settings=settings)
    before = read_raw(Path(settings.lake), "commune", "annee = 2022")["conso_totale_mwh"].sum()
    emulator.revise("commune", 2022, factor=1.5)
    emulator.clear_requests()

    report = ingest(["commune"], settings=settings)

    assert data_requests(emulator) == [("commune", "2022")]
    assert [r.partition for r in report.results if r.status == "loaded"] == ["commune/annee=2022"]
    after = read_raw(Path(settings.lake), "commune", "annee = 2022")["conso_totale_mwh"].sum()
    assert after == pytest.approx(before * 1.5, rel=1e-6)


def test_changed_signal_pulls_odre_dataset_again(emulator, settings):
    ingest(["nationale_annuelle"], settings=settings)
    emulator.revise("nationale_annuelle", 2021, factor=1.01)
    emulator.clear_requests()

    report = ingest(["nationale_annuelle"], settings=settings)

    assert report.count("loaded") == len(emulator.years_of("nationale_annuelle"))
    stored = read_raw(Path(settings.lake), "nationale_annuelle", "annee = 2021")
    served = emulator.table("nationale_annuelle", 2021)
    assert stored["consommation_brute_totale"].iloc[0] == float(
        served["consommation_brute_totale"].iloc[0]
    )
    assert counts_by_year(Path(settings.lake), "nationale_annuelle")[2021] == 1


def test_revision_fingerprint_is_exact_past_the_values_agg_cap(emulator, settings):
    """Data Fair returns at most N buckets (1000 for real); the rest is only `total_other`."""
    from flows.sources.catalog import get_dataset
    from flows.sources.portals import client_for

    emulator.agg_cap = 1  # one bucket per answer: every other year is beyond the cap
    dataset = get_dataset("commune")
    client = client_for(dataset, settings)
    try:
        found = client.partitions(dataset, client.metadata(dataset))
    finally:
        client.close()

    years = emulator.years_of("commune")
    assert sorted(found) == years
    for year in years:
        table = emulator.table("commune", year)
        assert found[year].count == len(table)
        expected = pd.to_numeric(table["conso_totale_mwh"], errors="coerce").sum()
        assert found[year].checksum == pytest.approx(expected, rel=1e-9)
    aggs = [r for r in emulator.requests if r["dataset"] == "commune" and r["kind"] == "agg"]
    assert len(aggs) > 1  # the year range was split until nothing was left out
