"""A full disk and a read-only lake: the run fails with one line naming where, and the lake
keeps what was committed before. A real filesystem of its own for the lake (tmpfs, mounted
here as root), real CLI processes, the emulator over HTTP, the session's Prefect server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import PortalEmulator
from tests.support.clienv import cli_env
from tests.support.lakestate import lake_state

pytestmark = pytest.mark.usefixtures("prefect_server")

DATASETS = "departement,nationale_annuelle"
YEAR = 2023
SIZE = "16m"
LEAVE = 64 * 1024  # what a run's small records need, not a partition (~300 kB here)


@pytest.fixture(scope="module")
def portals() -> Iterator[PortalEmulator]:
    with PortalEmulator() as emulator:
        emulator.data_fault("negative", "departement", YEAR, row=3)  # one quarantined row
        yield emulator


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own (tmpfs of SIZE) for the lake, unmounted afterwards."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, f"these tests mount a tmpfs (root needed): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cli(portals: PortalEmulator, command: str, lake: Path, *extra: str) -> tuple[int, str]:
    env = cli_env(portals, ENERGY_PIPELINE_PARTITION_RETRIES="1", ENERGY_PIPELINE_LEASE_WAIT_S="0")
    args = [sys.executable, "-m", "flows.cli", command, "--years", str(YEAR), "--lake",
            str(lake), "--no-progress", *extra]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stderr


def _fill(volume: Path, leave: int = 0) -> Path:
    """Take the volume's free bytes but `leave` (whole pages); the filler file, to delete."""
    filler = volume / "filler"
    page = os.statvfs(volume).f_frsize
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, page):
            with contextlib.suppress(OSError):
                while os.statvfs(volume).f_bavail * page - size >= leave:
                    handle.write(b"\0" * size)
    free = os.statvfs(volume).f_bavail * page
    assert leave <= free < leave + (1 << 20) // 16, (leave, free)
    if leave == 0:
        with pytest.raises(OSError) as full:
            (volume / "probe").write_bytes(b"\0" * page)
        assert full.value.errno == errno.ENOSPC
        (volume / "probe").unlink()
    return filler


def _failure_line(stderr: str) -> str:
    """The one-line reason the CLI ends with (its last stderr line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error line"
    return lines[-1]


def _fails(portals: PortalEmulator, command: str, lake: Path, *extra: str) -> str:
    """Run a command that must fail (exit 1): its one-line reason (the last stderr line;
    Prefect's own log lines, tracebacks included, come before it)."""
    code, err = _cli(portals, command, lake, *extra)
    line = _failure_line(err)
    assert code == 1, err[-2000:]
    assert line.startswith(f"energy-pipeline {command} failed:"), line
    return line


def _succeeds(portals: PortalEmulator, command: str, lake: Path, *extra: str) -> dict:
    """Run a command that must succeed: the lake's state after it, with no problem."""
    code, err = _cli(portals, command, lake, *extra)
    assert code == 0, err[-2000:]
    state = lake_state(lake)
    assert state["problems"] == [], state["problems"]
    return state


def _leftovers(lake: Path) -> list[str]:
    """Temporary files and staged folders a failed run must not leave."""
    found = [str(p.relative_to(lake)) for p in lake.rglob("*") if ".tmp" in p.name]
    for staging in lake.rglob("_staging"):
        found += [str(p.relative_to(lake)) for p in staging.iterdir()]
    return found


def test_a_full_or_read_only_lake_fails_in_one_line_and_keeps_what_was_committed(
    portals: PortalEmulator, volume: Path
) -> None:
    """One lake through every fault (each run on a tmpfs costs a Spark job: they share it)."""
    lake = volume / "lake"
    before = _succeeds(portals, "run", lake, "--datasets", DATASETS)
    assert len(before["raw"]) == 2 and before["gold"], before

    # Full before the run starts: it cannot even take the lake's lease, and says so.
    filler = _fill(volume)
    line = _fails(portals, "ingest", lake, "--datasets", DATASETS, "--force")
    assert line.startswith("energy-pipeline ingest failed: lake "), line
    assert str(lake) in line and "No space left on device" in line, line
    filler.unlink()
    assert lake_state(lake) == before and _leftovers(lake) == []

    # Full during the run: room for its small records, not for a partition's files ...
    filler = _fill(volume, leave=LEAVE)
    line = _fails(portals, "ingest", lake, "--datasets", DATASETS, "--force")
    assert "No space left on device" in line and "departement/annee=2023" in line, line
    # ... nor for the gold tables: the Spark job's root cause, not its log tail
    line = _fails(portals, "aggregate", lake)
    assert len(line) < 2000 and "No space left on device" in line, line
    filler.unlink()  # room to read the lake's state
    after = lake_state(lake)
    assert after["raw"] == before["raw"], "a failed load changed committed partitions"
    assert after["gold"] == before["gold"], "a failed publish changed the published tables"
    assert all("_versions" in p for p in after["problems"]), after["problems"]
    assert _leftovers(lake) == []

    # Read-only: every command fails at once naming the lake; not a byte changes.
    listing = sorted(str(p) for p in lake.rglob("*"))
    remount = ["mount", "-o", "remount,ro", str(volume)]
    assert subprocess.run(remount, check=False).returncode == 0
    try:
        for command, extra in (("ingest", ("--datasets", DATASETS, "--force")),
                               ("aggregate", ())):  # fmt: skip
            line = _fails(portals, command, lake, *extra)
            assert "Read-only file system" in line and str(lake) in line, line
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(volume)], check=True)
    assert sorted(str(p) for p in lake.rglob("*")) == listing

    # Room again: the next run that takes the lease (here a small ingest) sweeps what the
    # failed job staged; the lake is then as the first run left it, problems none.
    again = _succeeds(portals, "ingest", lake, "--datasets", "nationale_annuelle", "--force")
    assert again["raw"] == before["raw"] and again["gold"] == before["gold"]
