"""The console script: exit codes, one-line errors, settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from tests.support.lakeview import counts_by_year


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


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no test Prefect server, a fresh PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ENERGY_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return env | extra


def test_prefect_api_that_cannot_start_gives_a_hint(tmp_path):
    """A zero startup timeout stands for a machine too busy to start the ephemeral API."""
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--datasets", "nationale_annuelle",
         "--lake", str(tmp_path / "lake"), "--no-progress"],
        env=_cli_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 1
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("energy-pipeline ingest failed: the temporary Prefect API")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err and "PREFECT_API_URL" in err
    assert not (tmp_path / "lake" / "raw").exists()


@pytest.mark.spark
@pytest.mark.slow
def test_demo_completes_on_a_machine_busy_with_two_cpu_bound_processes(tmp_path):
    """Two busy loops take both cores; a fresh PREFECT_HOME has its database to create."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", "demo", "--years", "2023",
             "--lake", str(tmp_path / "lake"), "--no-progress"],
            env=_cli_env(tmp_path, ENERGY_PIPELINE_SPARK_MASTER="local[2]"),
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"published to {tmp_path / 'lake'}/gold/" in result.stdout
    gold = tmp_path / "lake" / "gold"
    assert (gold / "conso_commune" / "_current.json").is_file()
    print(f"demo under load: {elapsed:.0f} s")
