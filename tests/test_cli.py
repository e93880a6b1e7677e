"""The console script: exit codes, one-line errors, settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from tests.lakeview import counts_by_year


@pytest.fixture
def portal_env(emulator, monkeypatch, tmp_path) -> Path:
    lake = tmp_path / "lake"
    for portal, url in emulator.urls.items():
        monkeypatch.setenv(f"ENERGY_PIPELINE_{portal.upper()}_URL", url)
    monkeypatch.setenv("ENERGY_PIPELINE_LAKE", str(lake))
    monkeypatch.setenv("ENERGY_PIPELINE_HTTP_BACKOFF_BASE", "0.05")
    monkeypatch.setenv("ENERGY_PIPELINE_HTTP_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ENERGY_PIPELINE_PARTITION_RETRIES", "1")
    return lake


def test_ingest_command_loads_the_chosen_partitions(emulator, portal_env, capsys):
    status = main(
        ["ingest", "--datasets", "regionale_annuelle,nationale_annuelle", "--years", "2022-2023"]
    )

    assert status == 0
    assert counts_by_year(portal_env, "regionale_annuelle") == {
        y: len(emulator.table("regionale_annuelle", y)) for y in (2022, 2023)
    }
    assert "4 partitions loaded" in capsys.readouterr().out


def test_failed_run_exits_non_zero_with_one_line_reason(emulator, portal_env, capsys):
    emulator.inject(
        "status", dataset="nationale_annuelle", request="export", status=503, times=None
    )

    status = main(["ingest", "--datasets", "nationale_annuelle", "--years", "2023"])

    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("energy-pipeline ingest failed:")
    assert "nationale_annuelle/annee=2023" in err and "/exports/csv" in err


def test_unknown_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", "--datasets", "communes"])

    assert exit_.value.code == 2
    assert "unknown dataset(s) communes" in capsys.readouterr().err


@pytest.mark.spark
def test_run_shows_progress_a_summary_and_where_the_dashboard_is(emulator, portal_env, capsys):
    status = main(["run", "--datasets", "nationale_annuelle,regionale_annuelle", "--years", "2023"])

    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    rows = counts_by_year(portal_env, "regionale_annuelle")[2023]
    lines = captured.out.splitlines()
    ingestion = next(line for line in lines if "regionale_annuelle" in line and "│" in line)
    assert [c.strip() for c in ingestion.split("│")[1:-1]] == [
        "regionale_annuelle", "2023", "1", "0", "0", f"{rows:,}", "0",
    ]  # fmt: skip
    assert any("conso_regionale_brute" in line and "│" in line for line in lines)
    assert f"dashboard: {portal_env}/dashboard/index.html" in captured.out
    assert (portal_env / "dashboard" / "index.html").is_file()
    # Progress bars go to stderr, so stdout stays a clean report for scripts.
    assert "partitions" in captured.err and "2/2" in captured.err
    assert "Spark: gold tables" in captured.err
