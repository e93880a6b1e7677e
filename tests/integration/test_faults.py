"""Transport and data faults: the run completes with identical data, or fails loudly and cleanly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.flow import IngestFailed, ingest
from tests.support.lakeview import counts_by_year, duplicate_keys, read_raw

pytestmark = pytest.mark.usefixtures("prefect_server")

TRANSPORT_FAULTS = [
    # (dataset, request kind, fault kind, options)
    ("nationale_quotidienne", "export", "status", {"status": 429, "retry_after": 0.2, "times": 2}),
    ("commune", "lines", "status", {"status": 503, "times": 3}),
    ("regionale_annuelle", "records", "status", {"status": 502, "times": 2}),
    ("nationale_quotidienne", "export", "reset", {"fraction": 0.5}),
    ("commune", "lines", "reset", {"fraction": 0.3}),
    ("nationale_quotidienne", "export", "truncate", {"fraction": 0.6}),
    ("departement", "lines", "truncate", {"fraction": 0.5}),
    ("nationale_quotidienne", "export", "error_in_body", {"fraction": 0.4}),
    ("commune", "metadata", "status", {"status": 500, "times": 2}),
    ("commune", "lines", "slow", {"delay": 1.5, "times": 2}),  # beyond the read timeout
]


def data_requests(emulator, dataset: str) -> list[dict]:
    return [r for r in emulator.requests if r["dataset"] == dataset]


def faulted_requests(emulator, dataset: str, kind: str, fault: str, expected: int) -> list[dict]:
    """Faulted requests in the log; a slow one is logged when its late answer ends."""
    deadline = time.monotonic() + 5
    while True:
        log = data_requests(emulator, dataset)
        found = [r for r in log if r["fault"] == fault and r["kind"] == kind]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("dataset", "request_kind", "fault", "options"),
    TRANSPORT_FAULTS,
    ids=[f"{d}-{r}-{f}" for d, r, f, _ in TRANSPORT_FAULTS],
)
def test_transport_fault_is_retried_and_data_is_identical(
    emulator, settings, dataset, request_kind, fault, options
):
    emulator.inject(fault, dataset=dataset, request=request_kind, **options)
    settings.http_read_timeout = 0.5

    report = ingest([dataset], [2023], settings=settings)

    assert not report.failed
    assert counts_by_year(Path(settings.lake), dataset) == {
        2023: len(emulator.table(dataset, 2023))
    }
    assert duplicate_keys(Path(settings.lake), dataset) == 0
    times = options.get("times", 1)
    assert len(faulted_requests(emulator, dataset, request_kind, fault, times)) == times
    answered = [r for r in data_requests(emulator, dataset) if r["kind"] == request_kind]
    assert any(r["fault"] is None and r["status"] == 200 for r in answered)


def test_permanent_failure_names_dataset_partition_url_and_commits_nothing(emulator, settings):
    emulator.inject("status", dataset="commune", request="lines", status=500, times=None)

    with pytest.raises(IngestFailed) as failure:
        ingest(["commune", "departement"], [2023], settings=settings)

    message = str(failure.value)
    assert "dataset commune" in message
    assert "commune/annee=2023" in message
    assert "/lines?" in message and "HTTP 500" in message
    lake = Path(settings.lake)
    assert not (lake / "raw" / "commune" / "annee=2023").exists()
    assert counts_by_year(lake, "departement") == {2023: len(emulator.table("departement", 2023))}
    retries = [r for r in emulator.requests if r["dataset"] == "commune" and r["kind"] == "lines"]
    assert len(retries) == settings.http_max_attempts * (settings.partition_retries + 1)
    manifest = next((lake / "_manifests" / "loads").glob("*.json"))
    statuses = {p["partition"]: p["status"] for p in json.loads(manifest.read_text())["partitions"]}
    assert statuses == {"commune/annee=2023": "failed", "departement/annee=2023": "loaded"}


def test_a_failed_reload_leaves_the_committed_partition_intact(emulator, settings):
    ingest(["commune"], [2023], settings=settings)
    lake = Path(settings.lake)
    before = (
        read_raw(lake, "commune").sort_values(["code_commune", "operateur"]).reset_index(drop=True)
    )
    emulator.inject("reset", dataset="commune", request="lines", times=None, fraction=0.5)

    with pytest.raises(IngestFailed):
        ingest(["commune"], [2023], force=True, settings=settings)

    after = (
        read_raw(lake, "commune").sort_values(["code_commune", "operateur"]).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(before, after)


def quarantine(settings, dataset: str) -> pd.DataFrame:
    files = list((Path(settings.lake) / "quarantine" / dataset).rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else pd.DataFrame()


def test_bad_rows_go_to_quarantine_with_reasons_and_good_rows_load(emulator, settings):
    served = len(emulator.table("commune", 2023))
    emulator.data_fault("non_numeric", "commune", 2023, column="nb_sites", row=3)
    emulator.data_fault("negative", "commune", 2023, column="conso_totale_mwh", row=5)
    emulator.data_fault("conflicting_duplicate", "commune", 2023, column="conso_totale_mwh", row=7)
    emulator.data_fault("exact_duplicate", "commune", 2023, row=9)
    assert len(emulator.table("commune", 2023)) == served + 2

    report = ingest(["commune"], [2023], settings=settings)

    bad = quarantine(settings, "commune")
    reasons = " | ".join(bad["_reason"])
    assert len(bad) == 4  # non-numeric, negative, and both rows of the conflicting key
    assert "nb_sites: not a number: n/a" in reasons
    assert "conso_totale_mwh: greater_than_or_equal_to(0.0)" in reasons
    assert reasons.count("natural key") == 2
    (result,) = report.results
    assert result.rows_received == served + 2
    assert result.rows_quarantined == 4
    assert result.exact_duplicates_dropped == 1
    assert counts_by_year(Path(settings.lake), "commune") == {2023: served - 3}
    assert duplicate_keys(Path(settings.lake), "commune") == 0


def test_extra_column_is_kept_and_reported_as_drift(emulator, settings):
    emulator.data_fault("extra_column", "departement", 2023, column="colonne_nouvelle")

    report = ingest(["departement"], [2023], settings=settings)

    (result,) = report.results
    assert result.extra_columns == ["colonne_nouvelle"]
    stored = read_raw(Path(settings.lake), "departement")
    assert set(stored["colonne_nouvelle"]) == set(
        emulator.table("departement", 2023)["colonne_nouvelle"]
    )


def test_missing_required_column_fails_the_partition_naming_the_column(emulator, settings):
    emulator.data_fault("missing_column", "departement", 2023, column="conso_totale_mwh")

    with pytest.raises(IngestFailed) as failure:
        ingest(["departement"], [2023], settings=settings)

    message = str(failure.value)
    assert "conso_totale_mwh" in message
    assert "departement/annee=2023" in message and "http://127.0.0.1" in message
    assert not (Path(settings.lake) / "raw" / "departement" / "annee=2023").exists()


def test_missing_column_in_an_ods_export_fails_the_partition(emulator, settings):
    emulator.data_fault(
        "missing_column", "regionale_annuelle", 2023, column="consommation_brute_electricite_rte"
    )

    with pytest.raises(IngestFailed) as failure:
        ingest(["regionale_annuelle"], [2023], settings=settings)

    assert "consommation_brute_electricite_rte" in str(failure.value)
    assert "regionale_annuelle/annee=2023" in str(failure.value)


def test_a_400_on_the_year_filter_names_dataset_field_and_query(emulator, settings):
    emulator.inject("status", dataset="regionale_annuelle", request="records", status=400,
                    times=None)  # fmt: skip

    with pytest.raises(IngestFailed) as failure:
        ingest(["regionale_annuelle"], [2023], settings=settings)

    message = str(failure.value)
    assert "regionale_annuelle: the portal rejected the year filter on field 'annee'" in message
    assert "(declared date)" in message and "group_by=year(annee) as y" in message
    assert "HTTP 400" in message
