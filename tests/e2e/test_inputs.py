"""Inputs checked at the edge, and stop signals, with the CLI run as a user runs it.

- A bad setting (ENERGY_PIPELINE_*) or argument exits 2 with one stderr line naming it, before
  anything is written or started: the run's folder (its lake, its PREFECT_HOME) stays empty.
- SIGTERM / SIGINT exit 143 / 130 with one "stopped" line, and the temporary Prefect API server
  the CLI started does not outlive it, not even a SIGKILL of the CLI.

The stop scenarios take tens of seconds each (Prefect's import and its server's start), so they
run in the background, two at a time, from this module's first test on, beside the quick
tests; their own tests only collect the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import annotated_types
import psutil
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from flows.cli import FORCE_EXIT_AFTER_S, UsageError, _checked_settings, parse_datasets, parse_years
from flows.runtime import OWNER_ENV
from flows.settings import YEAR_MAX, YEAR_MIN, Settings, env_name
from flows.sources.catalog import DATASETS

CLI = [sys.executable, "-m", "flows.cli"]
INGEST = ["ingest", "--years", "2023", "--datasets", "departement"]
PREFIX = "ENERGY_PIPELINE_"
QUICK_TIMEOUT_S = 60  # a rejected input: nothing is started, so it ends in about a second
SERVER_WAIT_S = 150  # for the CLI's Prefect server process to appear (67 s seen, busy machine)
READY_WAIT_S = 180  # then for it to answer, or for the flow to reach the portal (busy machine)
KILL_GRACE_S = 10.0  # a SIGKILLed CLI: its server gets a parent-death signal and stops by then


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """No test Prefect server here (conftest's autouse one): the CLI starts its own, as for a
    user, and the tests that reject inputs show that it does not."""
    yield


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: no ENERGY_PIPELINE_* setting (no run owner either), no PREFECT_API_URL."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(PREFIX) and k != "PREFECT_API_URL"
    }
    return env | extra


@dataclass
class Rejected:
    returncode: int
    stdout: str
    lines: list[str]  # stderr
    left: list[str]  # what is in the run's folder afterwards (its lake, its PREFECT_HOME)


def run_rejected(tmp_path: Path, args: list[str], **settings: str) -> Rejected:
    """The CLI in a fresh folder holding its lake and PREFECT_HOME, which must stay empty."""
    folder = tmp_path / "run"
    folder.mkdir()
    env = user_env(PREFECT_HOME=str(folder / "prefect-home"))
    env |= {f"{PREFIX}{name}": value for name, value in settings.items()}
    args = [a.replace("{lake}", str(folder / "lake")) for a in args]
    result = subprocess.run(
        CLI + args, cwd=folder, env=env, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S
    )
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    return Rejected(result.returncode, result.stdout, result.stderr.splitlines(), left)


# -- 1. bad settings: exit 2, one line naming the variable, nothing written or started --------

BAD_SETTINGS = [
    ("LAKE", "s3://"),
    ("LAKE", "s3a://"),
    ("LAKE", "file://"),
    ("LAKE", "s3:///x"),
    ("LAKE", "ftp://host/x"),
    ("LAKE", ""),
    ("PORTAL_CONCURRENCY", "0"),
    ("HTTP_MAX_ATTEMPTS", "0"),
    ("SPOOL_BUCKET_ROWS", "0"),
    ("PARTITION_CONCURRENCY", "0"),
    ("VALIDATION_CHUNK_ROWS", "0"),
    ("DATAFAIR_PAGE_SIZE", "0"),
    ("DATAFAIR_PAGE_SIZE", "10001"),
    ("QUARANTINE_MAX_SHARE", "1.5"),
    ("QUARANTINE_MAX_SHARE", "-0.1"),
    ("HTTP_READ_TIMEOUT", "0"),
    ("HTTP_READ_TIMEOUT", "nan"),
    ("HTTP_READ_TIMEOUT", "inf"),
    ("LEASE_TTL_S", "0"),
    ("LEASE_WAIT_S", "-1"),
    ("ODRE_URL", "notaurl"),
    ("ODRE_URL", "ftp://x"),
    ("S3_ENDPOINT", "nonsense"),
    ("PORTAL_CONCURRENCY", "abc"),
    ("HTTP_MAX_ATTEMPTS", "abc"),
    ("DATAFAIR_PAGE_SIZE", "abc"),
    ("PARTITION_RETRIES", "abc"),
    ("QUARANTINE_MAX_ROWS", "1.5"),
]


@pytest.mark.parametrize(
    ("name", "value"), BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS]
)
def test_a_bad_setting_exits_2_naming_it_before_anything_is_written(tmp_path, name, value):
    args = INGEST if name == "LAKE" else [*INGEST, "--lake", "{lake}"]

    run = run_rejected(tmp_path, args, **{name: value})

    assert run.returncode == 2, run.lines
    assert len(run.lines) == 1, run.lines
    assert run.lines[0].startswith(f"energy-pipeline ingest: error: {PREFIX}{name}: "), run.lines
    assert run.lines[0].endswith(f"(got {value!r})")
    assert run.stdout == ""
    assert run.left == []  # no lake (./lake for the lake cases), no Prefect home: nothing ran


# -- 2. bad arguments ---------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("--years", "2023-2021", "range 2023-2021 goes backwards; write 2021-2023"),
    ("--years", "1800", "year 1800 is outside 2000-2100"),
    ("--years", "2101", "year 2101 is outside 2000-2100"),
    ("--years", "20x3", "malformed year or range '20x3'"),
    ("--years", "", "malformed year or range ''"),
    ("--years", "2023,,2024", "malformed year or range '' in '2023,,2024'"),
    ("--datasets", "nope", "unknown dataset(s) nope; choose from adresse, commune"),
    ("--datasets", "adresse,", "empty dataset name in 'adresse,'"),
    ("--lake", "s3://", "s3:// needs a bucket name"),
]


@pytest.mark.parametrize(
    ("option", "value", "reason"), BAD_ARGUMENTS, ids=[f"{o}={v!r}" for o, v, _ in BAD_ARGUMENTS]
)
def test_a_bad_argument_exits_2_with_one_line_naming_it(tmp_path, option, value, reason):
    args = {"--years": "2023", "--datasets": "departement", "--lake": "{lake}"} | {option: value}

    run = run_rejected(tmp_path, ["ingest", *(x for item in args.items() for x in item)])

    assert run.returncode == 2, run.lines
    assert len(run.lines) == 1, run.lines
    assert run.lines[0].startswith(f"energy-pipeline ingest: error: argument {option}: {reason}")
    assert run.stdout == ""
    assert run.left == []


year_bounds = st.integers(YEAR_MIN, YEAR_MAX)
year_parts = st.lists(
    st.tuples(year_bounds, year_bounds, st.booleans(), st.sampled_from(["", " ", "  "])),
    min_size=1,
    max_size=6,
)


@hypothesis_settings(max_examples=60, deadline=None, database=None)
@given(year_parts)
def test_parse_years_gives_each_year_of_the_ranges_once_in_the_order_given(parts):
    texts, expected, seen = [], [], set()
    for a, b, as_range, pad in parts:
        first, last = min(a, b), max(a, b)
        if not as_range:
            last = first
        texts.append(f"{pad}{first}{pad}-{pad}{last}{pad}" if as_range else f"{pad}{first}{pad}")
        for year in range(first, last + 1):
            if year not in seen:
                seen.add(year)
                expected.append(year)

    assert parse_years(",".join(texts)) == expected


@hypothesis_settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="0123456789-, x\t", max_size=30) | st.text(max_size=12))
def test_parse_years_on_any_text_gives_years_in_bounds_or_one_usage_error(text):
    try:
        years = parse_years(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert years and len(set(years)) == len(years)
        assert all(YEAR_MIN <= y <= YEAR_MAX for y in years)


@hypothesis_settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.sampled_from(list(DATASETS)), min_size=1, max_size=10))
def test_parse_datasets_keeps_the_first_of_each_name_in_order(names):
    assert parse_datasets(",".join(names)) == list(dict.fromkeys(names))


def test_a_dataset_named_twice_is_pulled_once():
    assert parse_datasets("adresse,adresse") == ["adresse"]
    assert parse_datasets(" adresse , commune,adresse") == ["adresse", "commune"]


# In-process, over every numeric setting and its declared bounds: any value out of them is one
# usage error naming the variable; any value within them is taken as is.

NUMERIC = {
    name: info
    for name, info in Settings.model_fields.items()
    if info.annotation in (int, float) and info.metadata
}


def _bounds(name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for rule in NUMERIC[name].metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if isinstance(rule, getattr(annotated_types, kind.title())):
                found[kind] = getattr(rule, kind)
    return found


def _numbers(name: str, *, valid: bool) -> st.SearchStrategy[str]:
    is_int = NUMERIC[name].annotation is int
    bounds = _bounds(name)
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if is_int:
        if valid:
            low_i = int(low) + ("gt" in bounds) if low is not None else None
            high_i = int(high) - ("lt" in bounds) if high is not None else None
            return st.integers(low_i, high_i).map(str)
        out: list[st.SearchStrategy[Any]] = []
        if low is not None:
            out.append(st.integers(max_value=int(low) - ("ge" in bounds)))
        if high is not None:
            out.append(st.integers(min_value=int(high) + ("le" in bounds)))
        return st.one_of(*out).map(str) | st.sampled_from(["1.5", "abc", "", "0x10", "1e3"])
    finite = {"allow_nan": False, "allow_infinity": False}
    if valid:
        return st.floats(low, high, exclude_min="gt" in bounds, exclude_max="lt" in bounds,
                         **finite).map(repr)  # fmt: skip
    out = []
    if low is not None:
        out.append(st.floats(max_value=low, exclude_max="ge" in bounds, **finite))
    if high is not None:
        out.append(st.floats(min_value=high, exclude_min="le" in bounds, **finite))
    return st.one_of(*out).map(repr) | st.sampled_from(["nan", "NaN", "inf", "-Infinity", "x"])


def _settings_from_env(values: dict[str, str]) -> Settings:
    env = user_env(**{env_name(name): value for name, value in values.items()})
    with mock.patch.dict(os.environ, env, clear=True):
        settings, _ = _checked_settings(argparse.Namespace(command="ingest", lake=None))
    return settings


@hypothesis_settings(max_examples=150, deadline=None, database=None)
@given(
    st.sampled_from(sorted(NUMERIC)).flatmap(
        lambda n: st.tuples(st.just(n), _numbers(n, valid=False))
    )
)
def test_any_numeric_setting_out_of_its_bounds_is_one_error_naming_it(case):
    name, value = case

    with pytest.raises(UsageError) as error:
        _settings_from_env({name: value})

    assert str(error.value).startswith(f"{env_name(name)}: "), str(error.value)
    assert str(error.value).count(PREFIX) == 1 and "\n" not in str(error.value)


@hypothesis_settings(max_examples=100, deadline=None, database=None)
@given(
    st.sampled_from(sorted(NUMERIC)).flatmap(
        lambda n: st.tuples(st.just(n), _numbers(n, valid=True))
    )
)
def test_any_numeric_setting_within_its_bounds_is_taken(case):
    name, value = case

    settings = _settings_from_env({name: value})

    assert getattr(settings, name) == (
        int(value) if NUMERIC[name].annotation is int else float(value)
    )


def test_every_bounded_setting_is_covered():
    assert {"portal_concurrency", "datafair_page_size", "quarantine_max_share",
            "http_read_timeout", "lease_ttl_s", "lease_wait_s"} <= set(NUMERIC)  # fmt: skip


# -- 3. stop signals: 143 / 130, one line, and the temporary Prefect API does not outlive it ----


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def owned_by(cli_pid: int) -> list[str]:
    """Live processes whose environment names the CLI (pid cli_pid) as their run owner."""
    found = []
    for process in psutil.process_iter():
        try:
            owner = process.environ().get(OWNER_ENV, "")
            if owner.startswith(f"{cli_pid}:") and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            continue
    return found


def wait_until(check: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


@dataclass
class StopOutcome:
    """How a CLI run ended after a signal (or why no signal was sent)."""

    problem: str = ""  # set when the scenario could not get to its signal
    cli_pid: int = 0
    server_owner: str = ""  # the run owner in the server's environment
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)  # stderr
    exit_s: float = 0.0  # from the signal to the CLI's exit
    left_at_exit: list[str] = field(default_factory=list)
    left_after: list[str] = field(default_factory=list)  # KILL_GRACE_S later, if any at exit
    steps: dict[str, float] = field(default_factory=dict)  # seconds from the start, to each step


class Scenario:
    """One CLI run, stopped by a signal at a chosen moment."""

    def __init__(self, folder: Path, sig: signal.Signals, moment: str) -> None:
        self.folder, self.sig, self.moment = folder, sig, moment
        self.portal: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.request: socket.socket | None = None  # the portal's side of the hung request

    def run(self) -> StopOutcome:
        outcome = StopOutcome()
        began = time.monotonic()
        try:
            self._run(
                outcome, lambda step: outcome.steps.setdefault(step, time.monotonic() - began)
            )
        finally:
            with contextlib.suppress(OSError):
                outcome.lines = (self.folder / "stderr").read_text(errors="replace").splitlines()
        return outcome

    def _run(self, outcome: StopOutcome, step: Callable[[str], object]) -> None:
        self.folder.mkdir(parents=True)
        if self.moment == "request in flight":  # a portal that takes requests, never answers
            self.portal = socket.create_server(("127.0.0.1", 0))
            self.portal.settimeout(READY_WAIT_S)
            port = self.portal.getsockname()[1]
        else:
            port = closed_port()
        url = f"http://127.0.0.1:{port}"
        env = user_env(**{f"{PREFIX}{p}_URL": url for p in ("ODRE", "ORE", "ENEDIS")})
        env |= {f"{PREFIX}HTTP_MAX_ATTEMPTS": "1", f"{PREFIX}PARTITION_RETRIES": "0"}
        with open(self.folder / "stdout", "wb") as out, open(self.folder / "stderr", "wb") as err:
            self.process = subprocess.Popen(
                [*CLI, *INGEST, "--lake", str(self.folder / "lake")],
                cwd=self.folder, env=env, stdout=out, stderr=err,
            )  # fmt: skip
        process = self.process
        outcome.cli_pid = process.pid
        server = wait_until(lambda: self._server() or process.poll() is not None, SERVER_WAIT_S)
        if not isinstance(server, psutil.Process):
            outcome.problem = f"no Prefect server child in {SERVER_WAIT_S} s ({process.poll()=})"
            return
        step("server process")
        try:
            outcome.server_owner = server.environ().get(OWNER_ENV, "")
        except psutil.Error as exc:
            outcome.problem = f"the server's environment is unreadable: {exc!r}"
            return
        outcome.problem = self._wait_for_moment(server)
        if outcome.problem:
            return
        step(self.moment)
        if process.poll() is not None:
            outcome.problem = f"the CLI ended (exit {process.returncode}) before the signal"
            return
        process.send_signal(self.sig)
        sent = time.monotonic()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            outcome.problem = f"no exit within 120 s of {self.sig.name}"
            return
        step("exit")
        outcome.returncode = process.returncode
        outcome.exit_s = time.monotonic() - sent
        outcome.left_at_exit = outcome.left_after = owned_by(process.pid)
        while outcome.left_after and time.monotonic() < sent + outcome.exit_s + KILL_GRACE_S:
            time.sleep(0.1)
            outcome.left_after = owned_by(process.pid)

    def _server(self) -> psutil.Process | None:
        assert self.process is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "uvicorn" in child.cmdline():
                        return child
        return None

    def _wait_for_moment(self, server: psutil.Process) -> str:
        if self.moment == "server starting":
            time.sleep(1.0)  # well inside the server's start (several seconds), before the flow
            return ""
        if self.moment == "request in flight":
            assert self.portal is not None
            try:
                connection, _ = self.portal.accept()  # the flow is running, its read is waiting
            except TimeoutError:
                return f"no request reached the portal within {READY_WAIT_S} s"
            self.request = connection
            return ""
        # "server up": its health endpoint answers
        cmdline = server.cmdline()
        port = cmdline[cmdline.index("--port") + 1]

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    return True
            except OSError:
                return False

        if not wait_until(healthy, READY_WAIT_S, step=0.2):
            return f"the server on port {port} was not healthy within {READY_WAIT_S} s"
        return ""

    def clean_up(self) -> None:
        """Whatever is left of this run (on a failure): the CLI we started, then its children."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for entry in owned_by(self.process.pid):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(int(entry.split()[0])).kill()
        for sock in (self.portal, self.request):
            if sock is not None:
                sock.close()


SCENARIOS = {  # the longest first; two at a time (next to the quick tests) on two cores
    "SIGTERM while a portal request hangs": (signal.SIGTERM, "request in flight"),
    "SIGKILL while the server runs": (signal.SIGKILL, "server up"),
    "SIGTERM while the server starts": (signal.SIGTERM, "server starting"),
    "SIGINT while the server starts": (signal.SIGINT, "server starting"),
}


@pytest.fixture(scope="module")
def stop_runs(tmp_path_factory) -> Iterator[dict[str, Future[StopOutcome]]]:
    """Every stop scenario, running in the background from the first request on."""
    root = tmp_path_factory.mktemp("stops")
    scenarios = {
        name: Scenario(root / f"run{i}", sig, moment)
        for i, (name, (sig, moment)) in enumerate(SCENARIOS.items())
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(s.run) for name, s in scenarios.items()}
        try:
            yield futures
        finally:
            for future in futures.values():
                with contextlib.suppress(Exception):
                    future.result(timeout=600)
            for scenario in scenarios.values():
                scenario.clean_up()


@pytest.fixture(scope="module", autouse=True)
def _stops_start_first(request) -> None:
    """Start the slow scenarios before the quick tests, when any of them is selected."""
    if any("stop_runs" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("stop_runs")


def outcome(stop_runs: dict[str, Future[StopOutcome]], name: str) -> StopOutcome:
    result = stop_runs[name].result(timeout=600)
    assert not result.problem, (result.problem, result.steps, result.lines[-15:])
    print(f"{name}: {result.steps}, exit {result.exit_s:.1f} s after the signal")
    return result


@pytest.mark.parametrize(
    ("name", "status"),
    [("SIGTERM while the server starts", 143), ("SIGINT while the server starts", 130)],
)
def test_a_stop_signal_exits_128_plus_it_and_stops_the_prefect_server(stop_runs, name, status):
    result = outcome(stop_runs, name)
    signame = name.split()[0]

    assert result.returncode == status, result.lines[-20:]
    assert result.lines[-1] == f"energy-pipeline ingest stopped: {signame} received"
    assert sum("stopped:" in line for line in result.lines) == 1
    assert result.server_owner.startswith(f"{result.cli_pid}:")  # the server carries the marker
    assert result.left_at_exit == []  # stopped before the CLI exits, not after


def test_sigterm_during_a_hung_portal_read_exits_within_the_forced_exit_delay(stop_runs):
    """Prefect's engine catches SIGTERM during a flow; the forced exit still comes in time."""
    result = outcome(stop_runs, "SIGTERM while a portal request hangs")

    assert result.returncode == 143, result.lines[-20:]
    stopped = "energy-pipeline ingest stopped: SIGTERM received"
    cut_short = f"{stopped} (cleanup took over {FORCE_EXIT_AFTER_S:.0f} s: cut short)"
    assert result.lines[-1] in (stopped, cut_short)
    assert result.exit_s < FORCE_EXIT_AFTER_S + 10, result.exit_s  # not the 120 s read timeout
    assert sum("stopped:" in line for line in result.lines) == 1
    assert result.server_owner.startswith(f"{result.cli_pid}:")
    assert result.left_after == [], result.left_at_exit


def test_a_sigkilled_cli_leaves_no_prefect_server_behind(stop_runs):
    result = outcome(stop_runs, "SIGKILL while the server runs")

    assert result.returncode == -signal.SIGKILL
    assert result.server_owner.startswith(f"{result.cli_pid}:")
    assert result.left_after == [], result.left_at_exit  # gone within KILL_GRACE_S
