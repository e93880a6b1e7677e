"""Ingestion from the portal emulator over real HTTP into a local lake, checked with DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.flow import ingest
from flows.settings import Settings
from flows.sources.catalog import DATASETS
from tests.support.lakeview import counts_by_year, duplicate_keys, read_raw

pytestmark = pytest.mark.usefixtures("prefect_server")


def lake_of(settings: Settings) -> Path:
    return Path(settings.lake)


def served_counts(emulator, dataset: str) -> dict[int, int]:
    return {year: len(emulator.table(dataset, year)) for year in emulator.years_of(dataset)}


def test_full_ingest_loads_every_partition_of_the_seven_datasets_exactly(emulator, settings):
    report = ingest(settings=settings)

    lake = lake_of(settings)
    assert not report.failed
    for dataset in DATASETS:
        expected = served_counts(emulator, dataset)
        assert counts_by_year(lake, dataset) == expected, dataset
        assert duplicate_keys(lake, dataset) == 0, dataset
    manifest = json.loads((lake / "_manifests" / "loads" / f"{report.load_id}.json").read_text())
    loaded = {(p["dataset"], p["year"]): p for p in manifest["partitions"]}
    assert loaded[("commune", 2023)]["rows_received"] == len(emulator.table("commune", 2023))
    assert all(p["status"] == "loaded" for p in manifest["partitions"])


def test_codes_keep_leading_zeros_and_corsican_letters(emulator, settings):
    ingest(["departement", "commune", "adresse"], [2023], settings=settings)

    lake = lake_of(settings)
    served = set(emulator.table("departement", 2023)["code_departement"].dropna().astype(str))
    stored = set(read_raw(lake, "departement")["code_departement"])
    assert stored == served
    assert {"01", "2A", "2B", "971"} <= stored
    communes = set(read_raw(lake, "commune")["code_commune"])
    assert communes == set(emulator.table("commune", 2023)["code_commune"].astype(str))
    assert any(c.startswith("2A") for c in communes)
    assert any(c.startswith("0") for c in communes)


def test_masked_ore_rows_are_null_never_zero(emulator, settings):
    ingest(["commune"], [2023], settings=settings)

    served = emulator.table("commune", 2023)
    masked_served = int(served["conso_totale_mwh"].isna().sum())
    stored = read_raw(lake_of(settings), "commune")
    masked = stored[stored["conso_totale_mwh"].isna()]
    assert masked_served > 0
    assert len(masked) == masked_served
    assert masked["nb_sites"].isna().all()
    assert masked["conso_moyenne_mwh"].isna().all()
    assert (served["conso_moyenne_mwh"].fillna(-1) == 0).sum() > 0  # the portal shows 0.0


def test_values_and_aliases_arrive_under_canonical_names(emulator, settings):
    ingest(["adresse", "commune"], [2022], settings=settings)

    lake = lake_of(settings)
    adresse = read_raw(lake, "adresse")
    served = emulator.table("adresse", 2022)
    assert adresse["consommation_annuelle_totale_de_l_adresse_mwh"].sum() == pytest.approx(
        pd.to_numeric(served["consommation_annuelle_totale_de_ladresse_mwh"]).sum()
    )
    commune = read_raw(lake, "commune")
    assert commune["conso_totale_mwh"].sum() == pytest.approx(
        pd.to_numeric(emulator.table("commune", 2022)["conso_totale_mwh"]).sum()
    )


def test_natran_spelling_is_read_as_the_grtgaz_column(emulator, settings):
    emulator.alias_variant("nationale_annuelle")

    ingest(["nationale_annuelle"], [2023], settings=settings)

    stored = read_raw(lake_of(settings), "nationale_annuelle")
    served = emulator.table("nationale_annuelle", 2023)
    assert "consommation_brute_gaz_natran" in served.columns
    assert stored["consommation_brute_gaz_grtgaz"].iloc[0] == pytest.approx(
        float(served["consommation_brute_gaz_natran"].iloc[0])
    )


def test_daily_partitions_follow_the_paris_calendar_year(emulator, settings):
    ingest(["nationale_quotidienne"], [2023], settings=settings)

    stored = read_raw(lake_of(settings), "nationale_quotidienne")
    local = stored["date_heure"].dt.tz_convert("Europe/Paris")
    assert (local.dt.year == 2023).all()
    assert len(stored) == len(emulator.table("nationale_quotidienne", 2023))


def test_datafair_cursor_pages_are_followed_without_loss_or_overlap(emulator, settings):
    settings.datafair_page_size = 997

    ingest(["adresse"], [2023], settings=settings)

    served = len(emulator.table("adresse", 2023))
    pages = [r for r in emulator.requests if r["kind"] == "lines" and r["query"].get("size") != "0"]
    assert len(pages) == -(-served // 997)
    assert all("after" in r["query"] for r in pages[1:])
    assert counts_by_year(lake_of(settings), "adresse") == {2023: served}
    assert duplicate_keys(lake_of(settings), "adresse") == 0


def test_opendatasoft_data_comes_from_exports_never_from_paged_records(emulator, settings):
    ingest(["regionale_quotidienne", "nationale_annuelle"], settings=settings)

    records = [r for r in emulator.requests if r["kind"] == "records"]
    assert records, "count probes are expected"
    assert all(r["query"].get("limit") == "0" or "group_by" in r["query"] for r in records), records
    assert all("offset" not in r["query"] for r in records)
    assert any(r["kind"] == "export" for r in emulator.requests)
