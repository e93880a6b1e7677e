"""`energy-pipeline outputs`: the dashboard and the Tableau extracts rebuilt from the published
gold tables alone (no ingest, no Spark), with the other commands' exit codes and errors."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emulator import PortalEmulator
from tests.support.clienv import cli_env

pytestmark = pytest.mark.usefixtures("prefect_server")


def _cli(portals: PortalEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(
        command, env=cli_env(portals), capture_output=True, text=True, timeout=600
    )


def _digests(folder: Path) -> dict[str, str]:
    """Every file below a folder (links resolved) and its content's digest."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_outputs_rebuilds_dashboard_and_extracts_from_published_tables_only(
    emulator: PortalEmulator, emulator_lake: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(emulator_lake, lake)
    shutil.rmtree(lake / "dashboard", ignore_errors=True)  # as after an upgrade: none yet
    for old in (lake / "gold").glob("*.hyper"):
        old.unlink()
    raw_before, gold_before = _digests(lake / "raw"), _digests(lake / "gold")
    requests_before = len(emulator.requests)

    done = _cli(emulator, "outputs", "--lake", str(lake), "--no-progress")

    assert done.returncode == 0, done.stderr[-2000:]
    assert f"dashboard: {lake / 'dashboard' / 'index.html'}" in done.stdout
    assert (lake / "dashboard" / "index.html").is_file()
    # nothing ingested, nothing aggregated: raw and the published tables are as they were
    assert len(emulator.requests) == requests_before
    assert _digests(lake / "raw") == raw_before
    gold_after = _digests(lake / "gold")
    assert {k: v for k, v in gold_after.items() if not k.endswith(".hyper")} == gold_before
    # one extract per published table (their content: tests/integration/test_tableau.py)
    published = sorted(p.name for p in (lake / "gold").iterdir() if p.is_dir() and
                       not p.name.startswith("_"))  # fmt: skip
    extracts = sorted(p.stem for p in (lake / "gold").glob("*.hyper"))
    assert extracts == published and len(published) == 8
    assert "conso_commune.hyper" in done.stdout


def test_outputs_on_a_lake_with_nothing_published_fails_in_one_line(
    emulator: PortalEmulator, tmp_path: Path
) -> None:
    lake = tmp_path / "empty-lake"

    done = _cli(emulator, "outputs", "--lake", str(lake), "--no-progress")

    assert done.returncode == 1, done.stderr[-2000:]
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("energy-pipeline outputs failed: no published gold tables"), last
    assert "dataset gold" in last and "_publish.json" in last
    assert not (lake / "dashboard").exists()


def test_outputs_takes_no_years_or_datasets(emulator: PortalEmulator, tmp_path: Path) -> None:
    done = _cli(emulator, "outputs", "--years", "2023", "--lake", str(tmp_path / "lake"))

    assert done.returncode == 2
    assert "unrecognized arguments: --years 2023" in done.stderr  # as for `aggregate --force`
