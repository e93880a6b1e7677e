"""Kill anywhere: SIGKILL the CLI at commit boundaries and at random instants, then rerun.

After each kill and its rerun, the lake must equal what one clean run produces (raw rows,
quarantined rows, load records, published gold tables and their plain views), hold no
staging or temporary file, and no process of the killed run may be alive.

The CLI runs as a real program (`energy-pipeline run`) against the portal emulator over HTTP,
with real Spark (local[2]) and the session's real Prefect server. Named kill points come from
`flows.crashpoints` (the run's commit boundaries, where ENERGY_PIPELINE_CRASH_AT makes the
process SIGKILL itself); random kills SIGKILL the CLI from outside after a seeded delay.

CI runs a few kills (KILL_POINTS, KILL_RANDOM); `KILL_POINTS=all KILL_RANDOM=10` runs every
point and ten random instants (the figures in the README).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import PortalEmulator
from flows.crashpoints import ENV as CRASH_ENV
from flows.crashpoints import POINTS
from tests.support.clienv import cli_env
from tests.support.lakestate import lake_state, owner_processes

pytestmark = pytest.mark.usefixtures("prefect_server")

DATASETS = "departement,commune,nationale_annuelle"
YEAR = 2023
DEFAULT_POINTS = "partition-committed:2,publish-committed"
_points = os.environ.get("KILL_POINTS", DEFAULT_POINTS)
KILL_POINTS = list(POINTS) if _points == "all" else [p for p in _points.split(",") if p]
KILL_RANDOM = int(os.environ.get("KILL_RANDOM", "1"))
KILL_SEED = int(os.environ.get("KILL_SEED", "7"))


@pytest.fixture(scope="module")
def portals() -> Iterator[PortalEmulator]:
    """Portals with a few bad rows, so that quarantine is part of what must survive a kill."""
    with PortalEmulator() as emulator:
        emulator.data_fault("negative", "departement", YEAR, row=3)
        emulator.data_fault("conflicting_duplicate", "commune", YEAR, row=5)
        yield emulator


def _env(portals: PortalEmulator, **extra: str) -> dict[str, str]:
    return cli_env(portals, **{"ENERGY_PIPELINE_HTTP_BACKOFF_BASE": "0.05"}, **extra)


def _command(lake: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "--datasets", DATASETS,
            "--years", str(YEAR), "--lake", str(lake), "--no-progress"]  # fmt: skip


def _run(lake: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(lake), env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def reference(portals: PortalEmulator, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One clean run: the state every killed-and-rerun lake must reach; and its duration."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    started = time.monotonic()
    done = _run(lake, _env(portals))
    assert done.returncode == 0, done.stderr[-3000:]
    state = lake_state(lake)
    assert state["problems"] == []
    assert any(p["quarantine"] for p in state["raw"].values())  # the faults reached quarantine
    assert len(state["gold"]) >= 3
    return {"state": state, "seconds": time.monotonic() - started}


def _cases() -> list[tuple[str, str]]:
    cases = [("point", point) for point in KILL_POINTS]
    rng = random.Random(KILL_SEED)
    cases += [("random", f"{rng.random():.3f}") for _ in range(KILL_RANDOM)]
    return cases


def _wait_gone(pid: int, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = owner_processes(pid)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = owner_processes(pid)
    return alive


@pytest.mark.parametrize(("kind", "where"), _cases(), ids=lambda v: str(v))
def test_a_killed_run_and_its_rerun_equal_a_clean_run(
    kind: str, where: str, portals: PortalEmulator, reference: dict, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    if kind == "point":
        env = _env(portals, **{CRASH_ENV: where})
        proc = subprocess.Popen(_command(lake), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == -signal.SIGKILL, f"never reached {where}: {err[-2000:]}"
    else:
        delay = 1.0 + float(where) * reference["seconds"]
        proc = subprocess.Popen(_command(lake), env=_env(portals), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    # no process of the killed run outlives it (Spark job, portal clients, Prefect server)
    assert _wait_gone(proc.pid) == [], f"processes of the killed run alive after {kind} {where}"

    done = _run(lake, _env(portals))
    assert done.returncode == 0, done.stderr[-3000:]
    state = lake_state(lake)
    assert state["problems"] == []
    assert state["raw"] == reference["state"]["raw"]
    assert state["gold"] == reference["state"]["gold"]
    assert _wait_gone(proc.pid, 1.0) == []
    shutil.rmtree(lake, ignore_errors=True)
