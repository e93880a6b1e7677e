"""Concurrent runs on one lake: they take turns (the lake's lease), none fails with a race,
and the lake ends as one clean run leaves it. Real CLI processes, the emulator over HTTP,
a local lake and an S3 lake (the tests' S3 server on loopback), and a Prefect server on
PostgreSQL that every CLI process reports to at once (tests/support/postgres.py)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from emulator import PortalEmulator
from tests.support.clienv import cli_env
from tests.support.lakestate import lake_state
from tests.support.lakeview import download_bucket

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

pytest_plugins = ["tests.support.postgres"]  # `postgres`, `prefect_on_postgres`
pytestmark = pytest.mark.usefixtures("prefect_on_postgres")

DATASETS = "departement,nationale_annuelle"
YEAR = 2023


@pytest.fixture(scope="module")
def portals() -> Iterator[PortalEmulator]:
    with PortalEmulator() as emulator:
        emulator.data_fault("negative", "departement", YEAR, row=3)  # one quarantined row
        yield emulator


def _env(portals: PortalEmulator, **extra: str) -> dict[str, str]:
    return cli_env(portals, **extra)


def _start(command: str, lake: str, env: dict[str, str]) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "flows.cli", command, "--years", str(YEAR), "--lake", lake,
            "--no-progress", "--datasets", DATASETS, "--force"]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _together(command: str, lake: str, env: dict[str, str], runs: int) -> list[tuple[int, str]]:
    procs = [_start(command, lake, env) for _ in range(runs)]
    return [(p.wait(timeout=900), p.communicate()[1]) for p in procs]


def _load_windows(lake: Path) -> list[tuple[datetime, datetime]]:
    windows = []
    for path in (lake / "_manifests" / "loads").glob("*.json"):
        manifest = json.loads(path.read_text())
        windows.append((datetime.fromisoformat(manifest["started_at"]),
                        datetime.fromisoformat(manifest["finished_at"])))  # fmt: skip
    return sorted(windows)


@pytest.fixture(scope="module")
def clean(portals: PortalEmulator, tmp_path_factory: pytest.TempPathFactory) -> dict:
    lake = tmp_path_factory.mktemp("clean") / "lake"
    [(code, err)] = _together("ingest", str(lake), _env(portals), 1)
    assert code == 0, err[-2000:]
    state = lake_state(lake)
    assert state["problems"] == [] and any(p["quarantine"] for p in state["raw"].values())
    return state


@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_ingests_on_a_local_lake_take_turns(
    runs: int, portals: PortalEmulator, clean: dict, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    started = time.monotonic()
    results = _together("ingest", str(lake), _env(portals), runs)
    elapsed = time.monotonic() - started
    assert [code for code, _ in results] == [0] * runs, [err[-1500:] for _, err in results]
    windows = _load_windows(lake)
    assert len(windows) == runs
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start, f"two loads wrote at once: {windows}"
    state = lake_state(lake)
    assert state["problems"] == []
    assert state["raw"] == clean["raw"]
    print(f"{runs} concurrent ingests: {elapsed:.1f} s in all")


@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_ingests_on_an_s3_lake_take_turns(
    runs: int,
    portals: PortalEmulator,
    clean: dict,
    s3_endpoint: str,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    env = _env(portals, ENERGY_PIPELINE_S3_ENDPOINT=s3_endpoint)
    prefix = f"lake-{runs}"  # a lake of its own, whatever the bucket holds already
    results = _together("ingest", f"s3://{s3_bucket}/{prefix}", env, runs)
    assert [code for code, _ in results] == [0] * runs, [err[-1500:] for _, err in results]
    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy") / prefix
    windows = _load_windows(local)
    assert len(windows) == runs, windows
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start, f"two loads wrote at once: {windows}"
    assert not (local / "_lease.json").exists()  # released by all
    state = lake_state(local)
    assert state["problems"] == []
    assert state["raw"] == clean["raw"]


def test_two_whole_pipeline_runs_at_once_both_succeed(
    portals: PortalEmulator, tmp_path: Path, postgres: PostgresCluster, prefect_on_postgres: dict
) -> None:
    lake = tmp_path / "lake"
    since = _completed_runs(postgres, prefect_on_postgres["database"])
    results = _together("run", str(lake), _env(portals), 2)
    assert [code for code, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    # Both runs reported to the server: two more completed pipeline runs in PostgreSQL.
    assert _completed_runs(postgres, prefect_on_postgres["database"]) == since + 2
    state = lake_state(lake)
    assert state["problems"] == []
    publishes = list((lake / "_manifests" / "publish").glob("*.json"))
    assert len(publishes) == 2 and state["gold"]


def _completed_runs(postgres: PostgresCluster, database: str) -> int:
    """Completed `energy_pipeline` flow runs (the parent flow) in the server's database."""
    [row] = postgres.fetch(
        database,
        "SELECT count(*) AS n FROM flow_run r JOIN flow f ON f.id = r.flow_id"
        " WHERE f.name = 'energy_pipeline' AND r.state_type = 'COMPLETED'",
    )
    return int(row["n"])


def test_a_second_run_that_may_not_wait_fails_naming_the_holder(
    portals: PortalEmulator, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    # the first run holds the lease for at least this long: longer than a loaded machine takes
    # to start the second CLI (Python, Prefect, settings) up to its lease request
    portals.inject("slow", dataset="departement", request="lines", delay=30.0, times=1)
    first = _start("ingest", str(lake), _env(portals))
    deadline = time.monotonic() + 120
    while not (lake / "_lease").exists() or not (lake / "_lease").read_text():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    started = time.monotonic()
    second = _start("ingest", str(lake), _env(portals, ENERGY_PIPELINE_LEASE_WAIT_S="0"))
    code = second.wait(timeout=120)
    took = time.monotonic() - started
    err = second.communicate()[1].strip().splitlines()
    assert first.wait(timeout=600) == 0
    assert code == 1
    assert err[-1].startswith("energy-pipeline ingest failed: lake ")
    assert "busy" in err[-1] and f"pid {first.pid}" in err[-1], err[-1]
    print(f"a second run that may not wait failed after {took:.1f} s")
