"""The lake's lease: one writer at a time, locally (flock) and on S3 (conditional writes).

Real processes and a real S3 server (SeaweedFS, on loopback): a holder in another process, a
holder that is SIGKILLed, a takeover after expiry, a holder that lost its lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from flows.lake.fs import Lake
from flows.lake.lease import S3_LEASE, LakeBusy, Lease, LeaseLost, hold

HOLDER = """
import sys, time
from flows.lake.fs import Lake
from flows.lake.lease import Lease
lake = Lake(sys.argv[1], s3_endpoint=sys.argv[2] or None)
lease = Lease(lake, run="holder-run", command="test", ttl_s=float(sys.argv[3]), wait_s=0)
lease.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _start_holder(uri: str, endpoint: str = "", ttl_s: float = 60.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, endpoint, str(ttl_s)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def s3_uri(s3_endpoint: str, s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/lake"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_run_is_refused_naming_the_holder(
    where: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    uri = str(tmp_path / "lake") if where == "local" else f"s3://{s3_bucket}/lake"
    endpoint = s3_endpoint if where == "s3" else ""
    holder = _start_holder(uri, endpoint)
    try:
        lake = Lake(uri, s3_endpoint=endpoint or None)
        started = time.monotonic()
        with pytest.raises(LakeBusy) as caught:
            Lease(lake, run="second", wait_s=0.5).acquire()
        waited = time.monotonic() - started
        message = str(caught.value)
        assert "holder-run" in message and f"pid {holder.pid}" in message, message
        assert "busy" in message and "\n" not in message
        assert 0.5 <= waited < 5, waited
    finally:
        _kill(holder)


def test_local_lease_is_free_as_soon_as_its_holder_is_killed(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    holder = _start_holder(uri)
    _kill(holder)
    lease = Lease(Lake(uri), run="next", wait_s=0)
    lease.acquire()  # the kernel dropped the dead holder's flock: no wait, no expiry
    assert json.loads((tmp_path / "lake" / "_lease").read_text())["run"] == "next"
    lease.release()


def test_a_waiting_run_gets_the_lease_when_the_holder_ends(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    holder = _start_holder(uri)
    threading.Timer(1.5, _kill, args=(holder,)).start()
    started = time.monotonic()
    with Lease(Lake(uri), run="patient", wait_s=30):
        waited = time.monotonic() - started
    assert 1.0 < waited < 10, waited


def test_s3_dead_holder_is_taken_over_only_after_its_expiry(s3_endpoint: str, s3_uri: str) -> None:
    holder = _start_holder(s3_uri, s3_endpoint, ttl_s=3.0)
    _kill(holder)  # its lease object stays, and stops being renewed
    lake = Lake(s3_uri, s3_endpoint=s3_endpoint)
    with pytest.raises(LakeBusy):
        Lease(lake, run="too-early", wait_s=0).acquire()
    started = time.monotonic()
    with Lease(lake, run="successor", ttl_s=30, wait_s=30):
        waited = time.monotonic() - started
        body = lake.fs.cat(lake.path(S3_LEASE))
        assert json.loads(body)["run"] == "successor"
    # expiry 3 s after its last heartbeat, plus the clock-skew margin of 5 s
    assert 1.0 < waited < 15, waited
    assert not lake.fs.exists(lake.path(S3_LEASE))  # released


def test_s3_heartbeat_keeps_a_live_holder_beyond_its_ttl(s3_endpoint: str, s3_uri: str) -> None:
    lake = Lake(s3_uri, s3_endpoint=s3_endpoint)
    with Lease(lake, run="long-run", ttl_s=1.5, wait_s=0):
        time.sleep(4 + 5)  # well past ttl + skew margin: only the heartbeat keeps it
        with pytest.raises(LakeBusy, match="long-run"):
            Lease(lake, run="intruder", wait_s=0).acquire()


def test_s3_holder_that_lost_its_lease_commits_nothing(
    s3_endpoint: str, s3_uri: str, tmp_path: Path
) -> None:
    lake = Lake(s3_uri, s3_endpoint=s3_endpoint)
    bucket, key = s3_uri.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    with hold(lake, run="victim", ttl_s=1.5, wait_s=0) as lease:
        # another run took the lake over (as after a long pause of this one)
        client.put_object(Bucket=bucket, Key=f"{key}/{S3_LEASE}", Body=b'{"run": "usurper"}')
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not lease._lost:
            time.sleep(0.1)
        with pytest.raises(LeaseLost):
            lease.check()
        lake.fs.pipe(lake.path("raw/x/_staging/l-annee=2023/part.parquet"), b"data")
        with pytest.raises(LeaseLost):
            lake.commit_folder("raw/x/_staging/l-annee=2023", "raw/x/annee=2023",
                               {"files": ["part.parquet"]})  # fmt: skip
    assert not lake.fs.exists(lake.path("raw/x/annee=2023/_current.json"))
    # the usurper's lease is left alone
    assert json.loads(lake.fs.cat(lake.path(S3_LEASE)))["run"] == "usurper"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_leases_exclude_each_other_under_contention(
    where: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """Six contenders on one lake: at no instant do two of them hold it."""
    uri = str(tmp_path / "lake") if where == "local" else f"s3://{s3_bucket}/lake"
    inside: list[int] = []
    overlaps: list[tuple[int, int]] = []
    guard = threading.Lock()
    done: list[int] = []

    def contender(number: int) -> None:
        lake = Lake(uri, s3_endpoint=s3_endpoint if where == "s3" else None)
        with Lease(lake, run=f"c{number}", wait_s=60):
            with guard:
                if inside:
                    overlaps.append((inside[0], number))
                inside.append(number)
            time.sleep(0.2)
            with guard:
                inside.remove(number)
        done.append(number)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(done) == list(range(6))
    assert overlaps == []


def test_nested_holds_share_one_lease(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    swept: list[str] = []
    with (
        hold(lake, run="outer", on_acquired=lambda lease: swept.append("outer")) as outer,
        hold(lake, run="inner", on_acquired=lambda lease: swept.append("inner")) as inner,
    ):
        assert inner is outer
    assert swept == ["outer"]  # the sweep runs once, when the lease is first taken
    with Lease(lake, run="after", wait_s=0):
        pass  # released when the outer hold ended
