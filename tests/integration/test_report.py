"""What a run reports: Prefect artifacts on the (real, temporary) Prefect server, and the CLI.

Expected figures come from the lake read back with DuckDB and from the emulator, not from
the code that writes the artifacts.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.flow import energy_pipeline
from flows.outputs.report import CHECKS_KEY, DASHBOARD_KEY, GOLD_KEY, SUMMARY_KEY
from tests.support.lakeview import counts_by_year

pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("prefect_server")]

DATASETS = ["nationale_annuelle", "regionale_annuelle", "departement"]


def _artifacts(flow_run_id: Any) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _progress_values(stop: threading.Event, seen: list[float], since: float) -> None:
    """Poll the server's progress artifacts while the run goes (the UI's view of it)."""
    from prefect.client.schemas.filters import ArtifactFilterType

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            for artifact in client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
            ):
                if artifact.created.timestamp() >= since:
                    seen.append(float(artifact.data))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def run(emulator_session, tmp_path_factory) -> dict[str, Any]:
    from tests.conftest import fast_settings

    emulator_session.reset()
    # Slow pages, so the progress artifact is seen between 0 and 100 %.
    emulator_session.inject("slow", dataset="departement", request="lines", delay=1.5, times=2)
    lake = tmp_path_factory.mktemp("report") / "lake"
    settings = fast_settings(emulator_session, str(lake))
    seen: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_progress_values, args=(stop, seen, time.time() - 1))
    watcher.start()
    try:
        state = energy_pipeline(DATASETS, [2023], False, settings, return_state=True)
    finally:
        stop.set()
        watcher.join()
        emulator_session.reset()
    assert state.is_completed(), state.message
    return {"state": state, "lake": lake, "progress": seen,
            "artifacts": _artifacts(state.state_details.flow_run_id)}  # fmt: skip


def _by_key(artifacts: list[Any]) -> dict[str, Any]:
    return {a.key: a for a in artifacts if a.key}


def test_run_has_summary_checks_and_link_artifacts(run):
    keyed = _by_key(run["artifacts"])
    assert set(keyed) == {SUMMARY_KEY, CHECKS_KEY, DASHBOARD_KEY, GOLD_KEY}
    assert keyed[SUMMARY_KEY].type == "markdown"
    assert keyed[CHECKS_KEY].type == "table"
    # Prefect stores a link artifact as its markdown: [text](link)
    assert f"(file://{run['lake']}/dashboard/index.html)" in keyed[DASHBOARD_KEY].data
    assert f"(file://{run['lake']}/gold/)" in keyed[GOLD_KEY].data
    assert (run["lake"] / "dashboard" / "index.html").is_file()


def test_summary_states_partitions_rows_and_outputs(run):
    summary = _by_key(run["artifacts"])[SUMMARY_KEY].data
    assert "3 partition(s) loaded, 0 skipped as unchanged, 0 failed" in summary
    for dataset in DATASETS:
        rows = counts_by_year(run["lake"], dataset)[2023]
        assert f"| {dataset} | 2023 | 1 | 0 | 0 | {rows:,} | 0 | 0 |" in summary
    gold = run["lake"] / "gold"
    for table in ("conso_region", "conso_nationale", "conso_regionale_brute"):
        rows = duckdb.sql(
            f"select count(*) from read_parquet('{gold}/{table}/**/*.parquet')"
        ).fetchall()[0][0]
        assert f"| {table} | {rows:,} |" in summary
    for step in ("ingest", "aggregate and publish", "dashboard and extracts"):
        assert f"| {step} |" in summary
    assert str(run["lake"]) in summary


def test_checks_table_holds_every_consistency_check_and_quality_row(run):
    table = json.loads(_by_key(run["artifacts"])[CHECKS_KEY].data)
    manifest = json.loads(max((run["lake"] / "_manifests" / "publish").glob("*.json")).read_text())
    gold_rows = {r["check"]: r for r in table if r["scope"] == "gold"}
    assert set(gold_rows) == {c["name"] for c in manifest["checks"]}
    for check in manifest["checks"]:
        assert gold_rows[check["name"]]["status"] == check["status"]
    quarantine = {r["scope"]: r for r in table if r["check"] == "quarantine"}
    assert set(quarantine) == set(DATASETS)
    assert all(r["findings"] == 0 and r["status"] == "ok" for r in quarantine.values())


def test_progress_artifact_moved_during_ingestion_and_ended_full(run):
    progress = [a for a in run["artifacts"] if a.type == "progress"]
    assert len(progress) == 1
    assert float(progress[0].data) == 100.0
    assert any(0 < value < 100 for value in run["progress"]), sorted(set(run["progress"]))


def test_failed_ingest_still_reports_what_was_loaded(emulator, tmp_path: Path):
    from tests.conftest import fast_settings

    emulator.inject("status", dataset="departement", request="lines", status=500, times=None)
    settings = fast_settings(emulator, str(tmp_path / "lake"), partition_retries=0)

    state = energy_pipeline(["nationale_annuelle", "departement"], [2023], False, settings,
                            return_state=True)  # fmt: skip

    assert state.is_failed()
    keyed = _by_key(_artifacts(state.state_details.flow_run_id))
    assert set(keyed) == {SUMMARY_KEY, CHECKS_KEY}  # nothing published, no links
    assert "1 partition(s) loaded, 0 skipped as unchanged, 1 failed" in keyed[SUMMARY_KEY].data
    failed = [r for r in json.loads(keyed[CHECKS_KEY].data) if r["status"] == "failed"]
    assert [r["scope"] for r in failed] == ["departement"]
